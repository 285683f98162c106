/* What the benchmarks' C load programs (loadgen.c, openloop.c) share: the clock, hex arguments, own CPU. */
#ifndef ASYNC_CHAT_LOADGEN_H
#define ASYNC_CHAT_LOADGEN_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds: the clock Python's time.monotonic_ns() reads too. */
static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Bytes from the hex the Python side passes them as; exits with status 2 on anything else. */
static inline unsigned char *unhex(const char *hex, size_t *len) {
    size_t n = strlen(hex) / 2;
    unsigned char *out = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        unsigned int byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1) {
            fprintf(stderr, "bad hex argument\n");
            exit(2);
        }
        out[i] = (unsigned char)byte;
    }
    *len = n;
    return out;
}

/* This process's CPU time so far (user and system), in seconds: reported beside every figure. */
static inline double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

#endif
