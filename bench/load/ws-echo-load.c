/* WebSocket echo load in C: CONNS connections to 127.0.0.1:PORT/PATH, each
 * sends a SIZE-byte masked text message and waits for its echo before the
 * next, for SECONDS; prints one JSON line like ws-echo-load.js:
 * {"conns", "seconds", "msgs", "msgs_per_s", "errors"}.
 *
 * The Node.js load tool fills its core before a fast server fills its
 * own (it spends about as much per message as the server): this one costs
 * a read and a write per message and little else, so the server's core is
 * the limit. One thread, epoll, level-triggered.
 *
 * usage: ws-echo-load PORT [PATH=/] [CONNS=50] [SECONDS=5] [SIZE=64]
 * (SIZE at most 125: one short frame header each way.) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct client {
    int fd;
    int got; /* bytes of the echo so far */
} client;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Blocking connect and handshake; then the socket goes non-blocking. */
static int open_ws(int port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, port);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char buf[1024];
    size_t len = 0;
    while (len < sizeof buf - 1) {
        ssize_t r = read(fd, buf + len, 1); /* byte by byte: nothing past the head is taken */
        if (r <= 0)
            break;
        len++;
        if (len >= 4 && memcmp(buf + len - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    buf[len] = 0;
    if (strncmp(buf, "HTTP/1.1 101", 12) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: ws-echo-load PORT [PATH] [CONNS] [SECONDS] [SIZE]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    const char *path = argc > 2 ? argv[2] : "/";
    int conns = argc > 3 ? atoi(argv[3]) : 50;
    double seconds = argc > 4 ? atof(argv[4]) : 5;
    int size = argc > 5 ? atoi(argv[5]) : 64;
    if (conns < 1 || size < 0 || size > 125)
        return 2;
    /* The frame: FIN + text, masked, the length, a fixed key, the payload
     * masked with it. */
    unsigned char frame[6 + 125];
    frame[0] = 0x81;
    frame[1] = (unsigned char)(0x80 | size);
    memcpy(frame + 2, "\x12\x34\x56\x78", 4);
    for (int i = 0; i < size; i++)
        frame[6 + i] = (unsigned char)('x' ^ frame[2 + (i & 3)]);
    int flen = 6 + size, elen = 2 + size; /* the echo: unmasked, a short header */

    client *cs = calloc((size_t)conns, sizeof *cs);
    int ep = epoll_create1(0), errors = 0, open = 0;
    for (int i = 0; i < conns; i++) {
        cs[i].fd = open_ws(port, path);
        if (cs[i].fd < 0) {
            errors++;
            continue;
        }
        open++;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    if (open < conns) {
        printf("{\"conns\": %d, \"opened\": %d, \"errors\": %d, \"msgs_per_s\": 0}\n", conns, open, errors);
        return 1;
    }
    long msgs = 0;
    double t0 = now(), end = t0 + seconds;
    for (int i = 0; i < conns; i++)
        if (write(cs[i].fd, frame, (size_t)flen) != flen)
            errors++;
    struct epoll_event evs[256];
    char buf[65536];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            client *c = evs[k].data.ptr;
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->got += (int)r;
            while (c->got >= elen) { /* one echo in flight: anything more is a fault */
                c->got -= elen;
                msgs++;
                if (write(c->fd, frame, (size_t)flen) != flen)
                    errors++;
            }
        }
    }
    double took = now() - t0;
    printf("{\"conns\": %d, \"seconds\": %.3f, \"msgs\": %ld, \"msgs_per_s\": %.0f, \"errors\": %d}\n", conns, took,
           msgs, msgs / took, errors);
    return 0;
}
