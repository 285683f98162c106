/*
 * The fan-out scenario's subscribers: N framed binary connections, each subscribed to one room and
 * long-polling it, in one process on epoll. A Python subscriber process spends about as much CPU per
 * delivery as the server does, and at 1,000 subscribers it saturated its core and measured itself; this
 * one uses a small part of the load core, so the latency it reports is the server's.
 *
 *   fanout HOST PORT SUBSCRIBERS WARMUP_S SECONDS TOTAL SUBSCRIBE_HEX POLL_HEX POLL_ID_AT UNSUBSCRIBE_HEX
 *          UNSUBSCRIBE_ID_AT
 *
 * Every connection sends SUBSCRIBE_HEX (one framed call) and keeps the subscription id its reply carries;
 * then prints "ready" on a line of its own (the caller starts the publisher then) and polls: POLL_HEX with
 * that id written at POLL_ID_AT, sent again as soon as each reply is read. Each message's content is
 * the CLOCK_MONOTONIC time in nanoseconds when it was due or sent, and a batch's latency is its arrival
 * minus the stamp of its first (oldest) message: the newest would hide how long the batch waited.
 * Counted from WARMUP_S after "ready", for SECONDS: deliveries, missed, batches, latency. After that, a
 * subscription polls on until it has seen TOTAL messages (delivered or reported missed; 0: stop at the end
 * of the window), then unsubscribes (UNSUBSCRIBE_HEX with the id at UNSUBSCRIBE_ID_AT), so that every
 * message published can be accounted for. Any reply that is not the expected one ends the run (status 1).
 *
 * Prints one JSON object: subscribers, delivered, missed, batches, seconds, p50_ms, p99_ms, p999_ms, max_ms,
 * delivered_all and missed_all (over the whole run, all subscribers), load_cpu_s (the measured seconds).
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
#include <unistd.h>

#include "loadgen.h"

#define MAX_ID 64

enum { SUBSCRIBING, POLLING, UNSUBSCRIBING, DONE };

typedef struct {
    int fd;
    int state;
    unsigned char *buf;
    size_t len, cap;
    unsigned char *poll; /* this subscription's poll call */
    char id[MAX_ID];
    size_t id_len;
    uint64_t seen; /* messages delivered or reported missed, over the whole run */
} conn_t;

/* A reader over one reply; `bad` is set on anything short or unexpected, and then every read returns 0. */
typedef struct {
    const unsigned char *p, *end;
    int bad;
} reader_t;

static const unsigned char *take(reader_t *r, size_t n) {
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const unsigned char *at = r->p;
    r->p += n;
    return at;
}

static uint64_t be(reader_t *r, size_t n) {
    const unsigned char *at = take(r, n);
    uint64_t v = 0;
    for (size_t i = 0; at && i < n; i++) v = (v << 8) | at[i];
    return v;
}

static void skip(reader_t *r, int type, int depth) {
    if (depth > 32) {
        r->bad = 1;
        return;
    }
    switch (type) {
    case 2: case 3: take(r, 1); break;           /* bool, byte */
    case 6: take(r, 2); break;                   /* i16 */
    case 8: take(r, 4); break;                   /* i32 */
    case 4: case 10: take(r, 8); break;          /* double, i64 */
    case 11: take(r, (size_t)(uint32_t)be(r, 4)); break; /* string */
    case 12:                                     /* struct */
        for (;;) {
            int t = (int)be(r, 1);
            if (r->bad || t == 0) break;
            take(r, 2);
            skip(r, t, depth + 1);
        }
        break;
    case 13: {                                   /* map */
        int k = (int)be(r, 1), v = (int)be(r, 1);
        uint32_t n = (uint32_t)be(r, 4);
        for (uint32_t i = 0; i < n && !r->bad; i++) {
            skip(r, k, depth + 1);
            skip(r, v, depth + 1);
        }
        break;
    }
    case 14: case 15: {                          /* set, list */
        int e = (int)be(r, 1);
        uint32_t n = (uint32_t)be(r, 4);
        for (uint32_t i = 0; i < n && !r->bad; i++) skip(r, e, depth + 1);
        break;
    }
    default: r->bad = 1;
    }
}

/* Past a strict REPLY's header to its result struct; then to the result's success field (id 0, a struct).
   0 when the reply is anything else: an exception, a declared error, a value of another kind. */
static int to_success(reader_t *r) {
    uint32_t head = (uint32_t)be(r, 4);
    if (r->bad || head != 0x80010002u) return 0;
    take(r, (size_t)(uint32_t)be(r, 4)); /* the method's name */
    take(r, 4);                          /* seqid */
    for (;;) {
        int t = (int)be(r, 1);
        if (r->bad || t == 0) return 0;
        int id = (int)be(r, 2);
        if (id == 0 && t == 12) return !r->bad;
        if (id == 0) return 0;
        skip(r, t, 1); /* only an error field could be here: treated as no success */
        return 0;
    }
}

/* A void reply (unsubscribe's): the result struct holds nothing. */
static int is_void(reader_t *r) {
    uint32_t head = (uint32_t)be(r, 4);
    if (r->bad || head != 0x80010002u) return 0;
    take(r, (size_t)(uint32_t)be(r, 4));
    take(r, 4);
    return be(r, 1) == 0 && !r->bad;
}

static int subscription_id(reader_t *r, conn_t *c) {
    if (!to_success(r)) return 0;
    for (;;) {
        int t = (int)be(r, 1);
        if (r->bad || t == 0) return c->id_len > 0;
        int id = (int)be(r, 2);
        if (id == 1 && t == 11) {
            size_t n = (size_t)(uint32_t)be(r, 4);
            const unsigned char *at = take(r, n);
            if (!at || n >= MAX_ID) return 0;
            memcpy(c->id, at, n);
            c->id_len = n;
        } else {
            skip(r, t, 1);
        }
    }
}

/* A Batch: its message count, missed, and the stamp of its first message (0 if none). */
static int batch(reader_t *r, uint64_t *count, uint64_t *missed, uint64_t *stamp) {
    *count = *missed = *stamp = 0;
    if (!to_success(r)) return 0;
    for (;;) {
        int t = (int)be(r, 1);
        if (r->bad) return 0;
        if (t == 0) return 1;
        int id = (int)be(r, 2);
        if (id == 1 && t == 15) {
            int e = (int)be(r, 1);
            uint32_t n = (uint32_t)be(r, 4);
            if (e != 12) return 0;
            *count = n;
            for (uint32_t i = 0; i < n && !r->bad; i++) {
                for (;;) { /* one Message: the first one's content (field 2) is its stamp */
                    int ft = (int)be(r, 1);
                    if (r->bad || ft == 0) break;
                    int fid = (int)be(r, 2);
                    if (i == 0 && fid == 2 && ft == 11) {
                        size_t len = (size_t)(uint32_t)be(r, 4);
                        const unsigned char *at = take(r, len);
                        for (size_t k = 0; at && k < len && at[k] >= '0' && at[k] <= '9'; k++)
                            *stamp = *stamp * 10 + (uint64_t)(at[k] - '0');
                    } else {
                        skip(r, ft, 2);
                    }
                }
            }
        } else if (id == 3 && t == 10) {
            *missed = be(r, 8);
        } else {
            skip(r, t, 1);
        }
    }
}

static void send_all(int fd, const unsigned char *data, size_t len) {
    while (len) {
        ssize_t w = write(fd, data, len);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue; /* a poll call is small: never for long */
        if (w <= 0) {
            fprintf(stderr, "fanout: write failed: %s\n", strerror(errno));
            exit(1);
        }
        data += w;
        len -= (size_t)w;
    }
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-th percentile by nearest rank, as benchmarks/harness.py's percentile(). */
static double percentile(double *sorted, size_t n, double q) {
    if (n == 0) return -1;
    long rank = (long)(q / 100 * (double)n + 0.5 + 0.5) - 1; /* round(q/100*n + 0.5) - 1 */
    if (rank < 0) rank = 0;
    if ((size_t)rank >= n) rank = (long)n - 1;
    return sorted[rank];
}

int main(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: fanout HOST PORT SUBSCRIBERS WARMUP_S SECONDS TOTAL SUBSCRIBE_HEX POLL_HEX"
                        " POLL_ID_AT UNSUBSCRIBE_HEX UNSUBSCRIBE_ID_AT\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "fanout: bad host %s\n", argv[1]);
        return 2;
    }
    size_t n = (size_t)atoll(argv[3]), subscribe_len, poll_len, unsubscribe_len;
    double warmup = atof(argv[4]), seconds = atof(argv[5]);
    uint64_t total = (uint64_t)atoll(argv[6]);
    unsigned char *subscribe = unhex(argv[7], &subscribe_len), *poll = unhex(argv[8], &poll_len);
    size_t poll_at = (size_t)atoll(argv[9]);
    unsigned char *unsubscribe = unhex(argv[10], &unsubscribe_len);
    size_t unsubscribe_at = (size_t)atoll(argv[11]);
    /* The id's place in each call: its length is the 4 bytes before it, and the id must fit it exactly. */
    size_t placeholder = poll_at >= 4 && poll_at <= poll_len ? (size_t)(poll[poll_at - 4] << 24 |
        poll[poll_at - 3] << 16 | poll[poll_at - 2] << 8 | poll[poll_at - 1]) : 0;
    if (n == 0 || seconds <= 0 || !placeholder || placeholder >= MAX_ID || poll_at + placeholder > poll_len ||
        unsubscribe_at + placeholder > unsubscribe_len) {
        fprintf(stderr, "fanout: bad arguments\n");
        return 2;
    }
    int epfd = epoll_create1(0);
    conn_t *conns = calloc(n, sizeof *conns);
    for (size_t i = 0; i < n; i++) {
        conn_t *c = &conns[i];
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            fprintf(stderr, "fanout: cannot connect subscriber %zu: %s\n", i, strerror(errno));
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        c->fd = fd;
        c->cap = 65536;
        c->buf = malloc(c->cap);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        send_all(fd, subscribe, subscribe_len);
    }

    size_t cap = 1 << 20, nsamples = 0, subscribed = 0, done = 0;
    double *samples = malloc(cap * sizeof *samples);
    uint64_t delivered = 0, missed = 0, batches = 0, delivered_all = 0, missed_all = 0;
    uint64_t ready = 0, window_start = UINT64_MAX, window_end = UINT64_MAX, deadline = UINT64_MAX;
    uint64_t measured_start = 0, measured_end = 0;
    double cpu_start = 0, cpu_end = 0;
    struct epoll_event events[256];
    while (done < n) {
        uint64_t now = now_ns();
        if (now >= deadline) {
            fprintf(stderr, "fanout: %zu subscriber(s) not finished 30 s after the window\n", n - done);
            return 1;
        }
        if (now >= window_start && !measured_start) {
            measured_start = now;
            cpu_start = cpu_seconds();
        }
        if (now >= window_end && !measured_end) {
            measured_end = now;
            cpu_end = cpu_seconds();
        }
        int got = epoll_wait(epfd, events, 256, 10);
        for (int e = 0; e < got; e++) {
            conn_t *c = events[e].data.ptr;
            for (;;) {
                if (c->cap - c->len < 4096) {
                    c->cap *= 2;
                    c->buf = realloc(c->buf, c->cap);
                }
                ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && errno == EAGAIN) break;
                if (r <= 0) {
                    fprintf(stderr, "fanout: the server closed a subscriber's connection\n");
                    return 1;
                }
                c->len += (size_t)r;
            }
            uint64_t arrived = now_ns();
            size_t at = 0;
            while (c->len - at >= 4) {
                size_t size = (size_t)((uint32_t)c->buf[at] << 24 | (uint32_t)c->buf[at + 1] << 16 |
                                       (uint32_t)c->buf[at + 2] << 8 | c->buf[at + 3]);
                if (c->len - at - 4 < size) break;
                reader_t r = {c->buf + at + 4, c->buf + at + 4 + size, 0};
                at += 4 + size;
                if (c->state == SUBSCRIBING) {
                    if (!subscription_id(&r, c)) {
                        fprintf(stderr, "fanout: subscribe was not answered with a subscription\n");
                        return 1;
                    }
                    if (c->id_len != placeholder) {
                        fprintf(stderr, "fanout: a subscription id of %zu bytes; the calls hold %zu\n", c->id_len,
                                placeholder);
                        return 1;
                    }
                    c->poll = malloc(poll_len);
                    memcpy(c->poll, poll, poll_len);
                    memcpy(c->poll + poll_at, c->id, c->id_len);
                    c->state = POLLING;
                    if (++subscribed == n) {
                        ready = now_ns();
                        window_start = ready + (uint64_t)((0.1 + warmup) * 1e9); /* the publisher's own 0.1 s */
                        window_end = window_start + (uint64_t)(seconds * 1e9);
                        deadline = window_end + 30000000000ull;
                        printf("ready\n");
                        fflush(stdout);
                        for (size_t i = 0; i < n; i++) send_all(conns[i].fd, conns[i].poll, poll_len);
                    }
                } else if (c->state == POLLING) {
                    uint64_t count, lost, stamp;
                    if (!batch(&r, &count, &lost, &stamp)) {
                        fprintf(stderr, "fanout: poll was not answered with a batch\n");
                        return 1;
                    }
                    c->seen += count + lost;
                    delivered_all += count;
                    missed_all += lost;
                    if (arrived >= window_start && arrived < window_end) {
                        delivered += count;
                        missed += lost;
                        batches += count > 0;
                        if (count && stamp && stamp <= arrived) {
                            if (nsamples == cap) samples = realloc(samples, (cap *= 2) * sizeof *samples);
                            samples[nsamples++] = (double)(arrived - stamp) / 1e6;
                        }
                    }
                    if (arrived < window_end || (total && c->seen < total)) {
                        send_all(c->fd, c->poll, poll_len);
                    } else {
                        unsigned char *call = malloc(unsubscribe_len);
                        memcpy(call, unsubscribe, unsubscribe_len);
                        memcpy(call + unsubscribe_at, c->id, c->id_len);
                        send_all(c->fd, call, unsubscribe_len);
                        free(call);
                        c->state = UNSUBSCRIBING;
                    }
                } else if (c->state == UNSUBSCRIBING) {
                    if (!is_void(&r)) {
                        fprintf(stderr, "fanout: unsubscribe was not answered as a void call\n");
                        return 1;
                    }
                    c->state = DONE;
                    done++;
                } else {
                    fprintf(stderr, "fanout: a reply nothing asked for\n");
                    return 1;
                }
            }
            memmove(c->buf, c->buf + at, c->len - at);
            c->len -= at;
        }
    }
    if (!measured_end) {
        measured_end = now_ns();
        cpu_end = cpu_seconds();
    }
    qsort(samples, nsamples, sizeof *samples, by_value);
    double took = measured_start ? (double)(measured_end - measured_start) / 1e9 : seconds;
    printf("{\"subscribers\": %zu, \"delivered\": %llu, \"missed\": %llu, \"batches\": %llu, \"seconds\": %.4f,"
           " \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f, \"delivered_all\": %llu,"
           " \"missed_all\": %llu, \"load_cpu_s\": %.4f}\n",
           n, (unsigned long long)delivered, (unsigned long long)missed, (unsigned long long)batches, took,
           percentile(samples, nsamples, 50), percentile(samples, nsamples, 99),
           percentile(samples, nsamples, 99.9), nsamples ? samples[nsamples - 1] : -1,
           (unsigned long long)delivered_all, (unsigned long long)missed_all, cpu_end - cpu_start);
    for (size_t i = 0; i < n; i++) close(conns[i].fd);
    return 0;
}
