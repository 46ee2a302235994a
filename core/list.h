/* Intrusive doubly linked lists: the node lives inside the object, so linking
 * and unlinking never allocate. An unlinked node points at itself, which makes
 * td_list_remove safe to call twice. */
#ifndef TD_LIST_H
#define TD_LIST_H

#include <stddef.h>

#define td_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

typedef struct td_list {
    struct td_list *prev;
    struct td_list *next;
} td_list;

static inline void td_list_init(td_list *node) { node->prev = node->next = node; }

static inline int td_list_empty(const td_list *head) { return head->next == head; }

static inline int td_list_linked(const td_list *node) { return node->next != node; }

static inline void td_list_push_back(td_list *head, td_list *node) {
    node->prev = head->prev;
    node->next = head;
    head->prev->next = node;
    head->prev = node;
}

static inline void td_list_remove(td_list *node) {
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = node;
}

/* Moves every node of `from` to the end of `to`; `from` is left empty. */
static inline void td_list_splice(td_list *from, td_list *to) {
    if (td_list_empty(from))
        return;
    td_list *first = from->next, *last = from->prev;
    first->prev = to->prev;
    to->prev->next = first;
    last->next = to;
    to->prev = last;
    td_list_init(from);
}

/* Iterate while the body may unlink the current node. */
#define td_list_foreach_safe(pos, tmp, head) \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); (pos) = (tmp), (tmp) = (pos)->next)

#endif
