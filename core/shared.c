/* Owns the slots' mapping, their eventfds and the dictionaries. */
#include "shared.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

static td_shared *current;

static void on_change(td_shdict *d, uint64_t mask) {
    (void)d;
    if (current)
        td_shared_notify(current, mask);
}

td_shared *td_shared_new(const char *const *names, const size_t *sizes, size_t n, unsigned nslots, char *err,
                         size_t errsize) {
    if (n > TD_SHARED_MAX_DICTS || nslots == 0 || nslots > TD_SHDICT_MAX_WATCHERS) {
        snprintf(err, errsize, "at most %d dictionaries and %d workers", TD_SHARED_MAX_DICTS,
                 TD_SHDICT_MAX_WATCHERS);
        return NULL;
    }
    td_shared *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errsize, "out of memory");
        return NULL;
    }
    s->nslots = nslots;
    void *m = mmap(NULL, nslots * sizeof *s->slots, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        snprintf(err, errsize, "cannot map the workers' slots: %s", strerror(errno));
        free(s);
        return NULL;
    }
    s->slots = m;
    for (unsigned i = 0; i < nslots; i++)
        s->slots[i].notify_fd = -1;
    for (unsigned i = 0; i < nslots; i++) {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) {
            snprintf(err, errsize, "eventfd: %s", strerror(errno));
            td_shared_free(s);
            return NULL;
        }
        s->slots[i].notify_fd = fd;
    }
    for (size_t i = 0; i < n; i++) {
        td_shdict *d = td_shdict_new(names[i], sizes[i]);
        if (!d) {
            snprintf(err, errsize, "cannot map the shared dictionary %s (%zu bytes): %s", names[i], sizes[i],
                     strerror(errno));
            td_shared_free(s);
            return NULL;
        }
        s->dicts[s->ndicts++] = d;
    }
    current = s;
    td_shdict_on_change(on_change);
    return s;
}

void td_shared_free(td_shared *s) {
    if (!s)
        return;
    if (current == s) {
        current = NULL;
        td_shdict_on_change(NULL);
    }
    for (size_t i = 0; i < s->ndicts; i++)
        td_shdict_free(s->dicts[i]);
    for (unsigned i = 0; i < s->nslots; i++)
        if (s->slots[i].notify_fd >= 0)
            close(s->slots[i].notify_fd);
    munmap(s->slots, s->nslots * sizeof *s->slots);
    free(s);
}

td_shared *td_shared_get(void) { return current; }

td_shdict *td_shared_dict(td_shared *s, const char *name) {
    for (size_t i = 0; s && i < s->ndicts; i++)
        if (strcmp(td_shdict_name(s->dicts[i]), name) == 0)
            return s->dicts[i];
    return NULL;
}

void td_shared_notify(td_shared *s, uint64_t mask) {
    for (unsigned i = 0; i < s->nslots && mask; i++, mask >>= 1) {
        if (!(mask & 1))
            continue;
        td_worker_slot *slot = &s->slots[i];
        if (atomic_exchange(&slot->pending, 1) == 0) {
            uint64_t one = 1;
            /* EAGAIN: the counter is full, so a wake-up is pending anyway. */
            if (write(slot->notify_fd, &one, sizeof one) < 0 && errno != EAGAIN)
                atomic_store(&slot->pending, 0);
        }
    }
}

void td_shared_notified(td_shared *s) {
    td_worker_slot *slot = &s->slots[s->self];
    uint64_t v;
    while (read(slot->notify_fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    /* Cleared after the read and before the caller reads the changes: a
     * writer records its change before it looks at `pending`, so a change
     * the caller misses wakes the worker again. */
    atomic_store(&slot->pending, 0);
}
