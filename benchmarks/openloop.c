/*
 * The open-loop publisher of the latency scenario: COUNT calls at RATE a second, each sent when it is
 * due, however far behind the server is (coordinated omission: a publisher that waits for replies
 * would slow down with the server and hide its queue).
 *
 *   openloop HOST PORT RATE COUNT REQUEST_HEX REPLY_HEX STAMP_OFFSET
 *
 * REQUEST_HEX is one framed call whose bytes at STAMP_OFFSET are 19 ASCII digits: call i carries there
 * the CLOCK_MONOTONIC time, in nanoseconds, at which it is due (start + i / RATE), so the subscriber
 * measures arrival minus due time on the clock both processes share. Every reply must be REPLY_HEX
 * byte for byte; the first that is not ends the run and counts every call not answered as an error.
 * Python cannot keep this schedule at tens of thousands of calls a second and still leave the core to
 * the subscriber it shares; this uses a small part of it. Built by benchmarks/loadgen.py on first use.
 *
 * Prints one JSON object: sent, replies, errors, start_ns, load_cpu_s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "loadgen.h"

#define STAMP_DIGITS 19
#define TICK_NS 100000ull /* calls due within one tick go out in one write: a wake-up per call costs more
                             than the calls on this machine; each call's latency still counts from when it
                             was due, so the grouping only ever counts against the server */

static void arm(int tfd, uint64_t at) {
    struct itimerspec when = {.it_value = {.tv_sec = (time_t)(at / 1000000000ull),
                                           .tv_nsec = (long)(at % 1000000000ull)}};
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &when, NULL);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: openloop HOST PORT RATE COUNT REQUEST_HEX REPLY_HEX STAMP_OFFSET\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "openloop: bad host %s\n", argv[1]);
        return 2;
    }
    double rate = atof(argv[3]);
    size_t count = (size_t)atoll(argv[4]), request_len, reply_len;
    unsigned char *request = unhex(argv[5], &request_len), *reply = unhex(argv[6], &reply_len);
    size_t stamp = (size_t)atoll(argv[7]);
    if (rate <= 0 || count == 0 || reply_len == 0 || stamp + STAMP_DIGITS > request_len) {
        fprintf(stderr, "openloop: bad arguments\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "openloop: cannot connect: %s\n", strerror(errno));
        return 1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

    /* The whole stream is written out in advance: the loop only hands the kernel what is due. */
    double interval = 1e9 / rate;
    uint64_t start = now_ns() + 100000000ull;
    unsigned char *stream = malloc(count * request_len);
    char digits[STAMP_DIGITS + 1];
    for (size_t i = 0; i < count; i++) {
        unsigned char *call = stream + i * request_len;
        memcpy(call, request, request_len);
        snprintf(digits, sizeof digits, "%019llu", (unsigned long long)(start + (uint64_t)((double)i * interval)));
        memcpy(call + stamp, digits, STAMP_DIGITS);
    }

    int epfd = epoll_create1(0), tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd}, tev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);
    arm(tfd, start);

    size_t due = 0, written = 0, got = 0, replies = 0, errors = 0;
    int failed = 0;
    unsigned mask = EPOLLIN;
    uint64_t deadline = start + (uint64_t)((double)count * interval) + 30000000000ull;
    unsigned char scratch[65536];
    while (replies + errors < count && !failed) {
        uint64_t now = now_ns();
        if (now >= deadline) break;
        if (due < count && now >= start) {
            size_t by_now = (size_t)((double)(now - start) / interval) + 1;
            due = by_now < count ? by_now : count;
            if (due < count) {
                uint64_t next = start + (uint64_t)((double)due * interval);
                arm(tfd, next > now + TICK_NS ? next : now + TICK_NS);
            }
        }
        while (written < due * request_len) {
            ssize_t w = write(fd, stream + written, due * request_len - written);
            if (w <= 0) break; /* the server is not reading: the rest waits for EPOLLOUT */
            written += (size_t)w;
        }
        /* While calls are still due, replies are read once a tick rather than waking this process one
           by one; once every call is out, as they come. */
        unsigned wanted = (written < due * request_len ? EPOLLOUT : 0u) | (due == count ? EPOLLIN : 0u);
        if (wanted != mask) {
            ev.events = wanted;
            epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
            mask = wanted;
        }
        struct epoll_event events[2];
        int n = epoll_wait(epfd, events, 2, 100);
        for (int e = 0; e < n; e++) {
            uint64_t expirations;
            if (events[e].data.fd == tfd && read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                failed = 1;
        }
        for (;;) {
            ssize_t r = read(fd, scratch, sizeof scratch);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno == EAGAIN) break;
            if (r <= 0) {
                failed = 1; /* the server closed the connection */
                break;
            }
            for (ssize_t i = 0; i < r && !failed; i++) {
                if (scratch[i] != reply[got]) {
                    failed = 1; /* not the expected reply: the stream cannot be followed further */
                } else if (++got == reply_len) {
                    got = 0;
                    replies++;
                }
            }
            if (failed) break;
        }
    }
    errors = count - replies; /* what was never answered as expected, for whatever reason */
    double cpu = cpu_seconds();
    printf("{\"sent\": %zu, \"replies\": %zu, \"errors\": %zu, \"start_ns\": %llu, \"load_cpu_s\": %.4f}\n",
           written / request_len, replies, errors, (unsigned long long)start, cpu);
    return 0;
}
