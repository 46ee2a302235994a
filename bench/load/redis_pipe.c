/* The C side of bench/redis_bench.py's parser comparison: hiredis (its
 * reply parser in C, blocking I/O) sends ROUNDS pipelines of 100 GETs of
 * key "hello" and reads the replies; prints the process's CPU microseconds
 * per reply. usage: redis_pipe PORT ROUNDS */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

static double cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    int port = atoi(argv[1]), rounds = atoi(argv[2]);
    redisContext *c = redisConnect("127.0.0.1", port);
    if (!c || c->err)
        return 1;
    double t0 = cpu_us();
    long replies = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < 100; i++)
            redisAppendCommand(c, "GET hello");
        for (int i = 0; i < 100; i++) {
            redisReply *reply;
            if (redisGetReply(c, (void **)&reply) != REDIS_OK)
                return 1;
            freeReplyObject(reply);
            replies++;
        }
    }
    printf("%.3f\n", (cpu_us() - t0) / (double)replies);
    redisFree(c);
    return 0;
}
