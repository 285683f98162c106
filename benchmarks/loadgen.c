/*
 * The benchmarks' load generator: closed-loop Thrift calls over N connections, one process, epoll.
 * With RATE, each connection instead sends its next call when it is due (RATE calls a second in all,
 * spread evenly), or at once if it is behind: latency then counts from when the call was due, so a server
 * that falls behind cannot hide its queue (constant throughput, as wrk2 measures).
 *
 * Every connection sends the same request bytes, waits for the whole reply, checks it is byte for byte
 * the expected reply, records the round trip, and sends again. Built by benchmarks/loadgen.py with the
 * system's C compiler on first use; a Python version of the same loop is the fallback.
 *
 *   loadgen HOST PORT CONNECTIONS WARMUP_S SECONDS REQUEST_HEX REPLY_HEX [RATE]
 *
 * Prints one JSON object: calls, errors, seconds, latency percentiles (microseconds), its own CPU time.
 * A reply that differs from the expected one is an error; its connection is closed and opened again.
 * A connection the server never answers within the run (a server that serves one at a time) counts in
 * "waiting", not as an error.
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

#define MAX_SAMPLES (1 << 24)

typedef struct {
    int fd;
    size_t sent;      /* bytes of the request written */
    size_t got;       /* bytes of the reply read */
    uint64_t started; /* when the request was first written, ns */
    int counted;      /* whether this call started after the warm-up */
    uint64_t due;     /* with RATE: when its next call is due, ns */
    int pending;      /* with RATE: idle until `due` */
} conn_t;

static unsigned char *request, *reply;
static size_t request_len, reply_len;
static struct sockaddr_in addr;
static int epfd;
static uint64_t *samples;
static size_t nsamples;
static uint64_t calls, errors, reconnects;
static double interval; /* with RATE: ns between one connection's calls; 0: closed loop */

static int open_conn(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void start_call(conn_t *c, uint64_t warm_until) {
    c->sent = c->got = 0;
    c->pending = 0;
    c->started = interval > 0 ? c->due : now_ns();
    c->counted = c->started >= warm_until;
    ssize_t n = write(c->fd, request, request_len);
    if (n > 0) c->sent = (size_t)n;
    if (c->sent < request_len) { /* rare: the rest when the socket can take it */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void restart(conn_t *c, uint64_t warm_until) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    reconnects++;
    if (open_conn(c) == 0) start_call(c, warm_until);
    else c->fd = -1;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double q) {
    if (!nsamples) return -1;
    size_t rank = (size_t)(q / 100.0 * (double)nsamples);
    if (rank >= nsamples) rank = nsamples - 1;
    return (double)samples[rank] / 1000.0;
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: loadgen HOST PORT CONNECTIONS WARMUP_S SECONDS REQUEST_HEX REPLY_HEX [RATE]\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad host %s\n", argv[1]);
        return 2;
    }
    int nconn = atoi(argv[3]);
    double warmup = atof(argv[4]), seconds = atof(argv[5]);
    request = unhex(argv[6], &request_len);
    reply = unhex(argv[7], &reply_len);
    samples = malloc(sizeof(uint64_t) * MAX_SAMPLES);
    unsigned char *scratch = malloc(65536);
    epfd = epoll_create1(0);
    conn_t *conns = calloc((size_t)nconn, sizeof(conn_t));
    for (int i = 0; i < nconn; i++) {
        if (open_conn(&conns[i]) < 0) {
            fprintf(stderr, "loadgen: cannot connect: %s\n", strerror(errno));
            return 1;
        }
    }
    double rate = argc == 9 ? atof(argv[8]) : 0;
    interval = rate > 0 ? (double)nconn * 1e9 / rate : 0;
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);
    uint64_t t0 = now_ns();
    uint64_t warm_until = t0 + (uint64_t)(warmup * 1e9);
    uint64_t end = warm_until + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < nconn; i++) {
        conns[i].due = t0 + (uint64_t)(interval * i / nconn);
        if (interval > 0) conns[i].pending = 1;
        else start_call(&conns[i], warm_until);
    }
    struct epoll_event events[512];
    uint64_t now = t0;
    while (now < end) {
        if (interval > 0) { /* send what is due; wake for the next one due */
            uint64_t next = end;
            for (int i = 0; i < nconn; i++) {
                if (!conns[i].pending || conns[i].fd < 0) continue;
                if (conns[i].due <= now) start_call(&conns[i], warm_until);
                else if (conns[i].due < next) next = conns[i].due;
            }
            struct itimerspec when = {.it_value = {.tv_sec = (time_t)(next / 1000000000ull),
                                                   .tv_nsec = (long)(next % 1000000000ull)}};
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &when, NULL);
        }
        int n = epoll_wait(epfd, events, 512, 50);
        now = now_ns();
        for (int e = 0; e < n; e++) {
            conn_t *c = events[e].data.ptr;
            if (c == NULL) { /* the timer: what is due goes out at the top of the loop */
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) return 1;
                continue;
            }
            if (events[e].events & EPOLLOUT && c->sent < request_len) {
                ssize_t w = write(c->fd, request + c->sent, request_len - c->sent);
                if (w > 0) c->sent += (size_t)w;
                if (c->sent == request_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (!(events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            ssize_t r = read(c->fd, scratch, 65536);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++; /* the server closed the connection mid-call */
                restart(c, warm_until);
                continue;
            }
            if (c->got + (size_t)r > reply_len || memcmp(scratch, reply + c->got, (size_t)r) != 0) {
                errors++; /* not the expected reply */
                restart(c, warm_until);
                continue;
            }
            c->got += (size_t)r;
            if (c->got < reply_len) continue;
            now = now_ns();
            if (c->counted && now <= end) {
                calls++;
                if (nsamples < MAX_SAMPLES) samples[nsamples++] = now - c->started;
            }
            if (interval > 0) {
                c->due += (uint64_t)interval;
                c->got = 0;
                if (c->due <= now) start_call(c, warm_until); /* behind: at once, its wait still counts */
                else c->pending = 1;
            } else {
                start_call(c, warm_until);
            }
        }
    }
    int waiting = 0; /* connections whose call was never answered during the measured time */
    uint64_t fin = now_ns();
    for (int i = 0; i < nconn; i++)
        if (conns[i].fd >= 0 && conns[i].got == 0 && fin > conns[i].started &&
            fin - conns[i].started > (uint64_t)(seconds * 1e9))
            waiting++;
    qsort(samples, nsamples, sizeof(uint64_t), cmp);
    double cpu = cpu_seconds();
    printf("{\"calls\": %llu, \"errors\": %llu, \"reconnects\": %llu, \"waiting\": %d, \"seconds\": %.6f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"load_cpu_s\": %.4f}\n",
           (unsigned long long)calls, (unsigned long long)errors, (unsigned long long)reconnects, waiting,
           seconds, pct(50), pct(99), pct(99.9), cpu);
    return 0;
}
