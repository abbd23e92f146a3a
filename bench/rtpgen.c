/* RTP load generator and sink for bench/media_bench.py (telephony.md §8.3).
 *
 *   gcc -O2 -pthread -o rtpgen bench/rtpgen.c      (media_bench.py builds it into bench/.build/ itself)
 *   rtpgen STREAMS SECONDS WARMUP_S
 *
 * Binds STREAMS UDP sockets on 127.0.0.1 and prints their ports on one line. Then reads one line of
 * "host:port" destinations (one per stream) from stdin. Stream i sends a 172-byte RTP packet (PT 0, 160
 * octets of payload) every 20 ms on absolute 1 ms slots (streams spread over the 20 slots) to its destination
 * and receives what the relay forwards from stream i^1 (the other phone of the call). The send time of each
 * packet is kept by sequence number; a receiving thread (epoll + recvmmsg) matches arrivals against it.
 * Packets sent between WARMUP_S and WARMUP_S + SECONDS are counted; the sink drains 300 ms more.
 * Output: one JSON object on stdout (sent, received, delay percentiles in ns, mean RFC 3550 jitter in ns,
 * this program's CPU seconds over the window, p99 lateness of the send slots in ns).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PTIME_NS 20000000LL
#define SLOTS 20
#define SLOT_NS (PTIME_NS / SLOTS)
#define PAYLOAD 160
#define PKT (12 + PAYLOAD)
#define DRAIN_NS 300000000LL
#define BUCKET_NS 1000LL          /* delay histogram: 1 µs buckets */
#define BUCKETS (10 * 1000 * 1000) /* up to 10 s */
#define BATCH 64

static int n_streams;
static int *socks;
static struct sockaddr_in *dest;
static int64_t **sent_at; /* [stream][seq] send time, 0 = not sent */
static int max_packets;
static volatile int window_open; /* counting */
static int *window_first;        /* first seq counted per stream */
static int *window_last;         /* one past the last seq counted */
static uint32_t *delay_hist;
static int64_t delay_max;
static int64_t received_total;
static double *jitter;
static int64_t *last_transit;
static volatile int stop_sink;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void *sink(void *arg) {
    (void)arg;
    int ep = epoll_create1(0);
    for (int i = 0; i < n_streams; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, socks[i], &ev);
    }
    static unsigned char bufs[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    for (int j = 0; j < BATCH; j++) {
        iovs[j].iov_base = bufs[j];
        iovs[j].iov_len = sizeof bufs[j];
        memset(&msgs[j], 0, sizeof msgs[j]);
        msgs[j].msg_hdr.msg_iov = &iovs[j];
        msgs[j].msg_hdr.msg_iovlen = 1;
    }
    struct epoll_event events[256];
    while (!stop_sink) {
        int n = epoll_wait(ep, events, 256, 50);
        for (int e = 0; e < n; e++) {
            int i = (int)events[e].data.u32;
            int src = i ^ 1;
            for (;;) {
                int got = recvmmsg(socks[i], msgs, BATCH, MSG_DONTWAIT, NULL);
                if (got <= 0)
                    break;
                int64_t t = now_ns();
                for (int j = 0; j < got; j++) {
                    if (msgs[j].msg_len < 12)
                        continue;
                    int seq = (bufs[j][2] << 8) | bufs[j][3];
                    if (seq >= max_packets)
                        continue;
                    int64_t s = __atomic_load_n(&sent_at[src][seq], __ATOMIC_ACQUIRE);
                    if (s == 0 || seq < window_first[src] || seq >= window_last[src])
                        continue;
                    int64_t transit = t - s;
                    received_total++;
                    int64_t b = transit / BUCKET_NS;
                    delay_hist[b < BUCKETS ? b : BUCKETS - 1]++;
                    if (transit > delay_max)
                        delay_max = transit;
                    if (last_transit[i]) {
                        int64_t d = transit - last_transit[i];
                        if (d < 0)
                            d = -d;
                        jitter[i] += ((double)d - jitter[i]) / 16.0; /* RFC 3550 §6.4.1 */
                    }
                    last_transit[i] = transit;
                }
                if (got < BATCH)
                    break;
            }
        }
    }
    close(ep);
    return NULL;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t percentile(double q, int64_t total) {
    if (total == 0)
        return -1;
    int64_t want = (int64_t)(q * (double)total), seen = 0;
    for (int64_t b = 0; b < BUCKETS; b++) {
        seen += delay_hist[b];
        if (seen > want)
            return b * BUCKET_NS;
    }
    return (BUCKETS - 1) * BUCKET_NS;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: rtpgen STREAMS SECONDS WARMUP_S\n");
        return 2;
    }
    n_streams = atoi(argv[1]);
    double seconds = atof(argv[2]), warmup = atof(argv[3]);
    if (n_streams < 2 || n_streams % 2 || seconds <= 0 || warmup < 0) {
        fprintf(stderr, "rtpgen: bad arguments\n");
        return 2;
    }
    int64_t frames = (int64_t)((seconds + warmup) * 1e9 / PTIME_NS) + 2;
    max_packets = (int)(frames < 65536 ? frames : 65536);
    socks = calloc(n_streams, sizeof *socks);
    dest = calloc(n_streams, sizeof *dest);
    sent_at = calloc(n_streams, sizeof *sent_at);
    window_first = calloc(n_streams, sizeof(int));
    window_last = calloc(n_streams, sizeof(int));
    jitter = calloc(n_streams, sizeof(double));
    last_transit = calloc(n_streams, sizeof(int64_t));
    delay_hist = calloc(BUCKETS, sizeof(uint32_t));
    for (int i = 0; i < n_streams; i++) {
        sent_at[i] = calloc(max_packets, sizeof(int64_t));
        window_first[i] = max_packets;
        window_last[i] = max_packets;
        socks[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        int rcv = 256 * 1024;
        setsockopt(socks[i], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (bind(socks[i], (struct sockaddr *)&a, sizeof a) != 0) {
            perror("bind");
            return 1;
        }
        socklen_t len = sizeof a;
        getsockname(socks[i], (struct sockaddr *)&a, &len);
        printf("%s%d", i ? " " : "", ntohs(a.sin_port));
    }
    printf("\n");
    fflush(stdout);
    for (int i = 0; i < n_streams; i++) {
        char host[64];
        int port;
        if (scanf(" %63[^:]:%d", host, &port) != 2) {
            fprintf(stderr, "rtpgen: expected %d host:port destinations\n", n_streams);
            return 1;
        }
        dest[i].sin_family = AF_INET;
        dest[i].sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, host, &dest[i].sin_addr);
    }

    pthread_t th;
    pthread_create(&th, NULL, sink, NULL);
    unsigned char pkt[PKT];
    memset(pkt, 0xff, sizeof pkt);
    int64_t slots_total = (int64_t)((warmup + seconds) * 1e9 / SLOT_NS);
    int64_t warm_slots = (int64_t)(warmup * 1e9 / SLOT_NS);
    int64_t *late = calloc(slots_total + 1, sizeof(int64_t));
    int64_t n_late = 0;
    int *seq = calloc(n_streams, sizeof(int));
    double cpu0 = 0;
    int64_t t0 = now_ns() + 50000000LL;
    for (int64_t k = 0; k < slots_total; k++) {
        int64_t at = t0 + k * SLOT_NS;
        struct timespec ts = {.tv_sec = at / 1000000000LL, .tv_nsec = at % 1000000000LL};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        int64_t t = now_ns();
        if (k == warm_slots) {
            for (int i = 0; i < n_streams; i++)
                window_first[i] = seq[i];
            cpu0 = cpu_s();
            window_open = 1;
        }
        if (window_open)
            late[n_late++] = t - at;
        for (int i = (int)(k % SLOTS); i < n_streams; i += SLOTS) {
            int s = seq[i];
            if (s >= max_packets)
                continue;
            seq[i] = s + 1;
            uint32_t ts_rtp = (uint32_t)s * PAYLOAD, ssrc = 0x1000u + (uint32_t)i;
            pkt[0] = 0x80;
            pkt[1] = 0;
            pkt[2] = (unsigned char)(s >> 8);
            pkt[3] = (unsigned char)s;
            pkt[4] = ts_rtp >> 24, pkt[5] = ts_rtp >> 16, pkt[6] = ts_rtp >> 8, pkt[7] = ts_rtp;
            pkt[8] = ssrc >> 24, pkt[9] = ssrc >> 16, pkt[10] = ssrc >> 8, pkt[11] = ssrc;
            __atomic_store_n(&sent_at[i][s], now_ns(), __ATOMIC_RELEASE);
            sendto(socks[i], pkt, sizeof pkt, 0, (struct sockaddr *)&dest[i], sizeof dest[i]);
        }
    }
    for (int i = 0; i < n_streams; i++)
        window_last[i] = seq[i];
    double cpu1 = cpu_s();
    int64_t drain_until = now_ns() + DRAIN_NS;
    struct timespec ts = {.tv_sec = drain_until / 1000000000LL, .tv_nsec = drain_until % 1000000000LL};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    stop_sink = 1;
    pthread_join(th, NULL);

    int64_t sent = 0;
    double jit = 0;
    for (int i = 0; i < n_streams; i++) {
        sent += window_last[i] - window_first[i];
        jit += jitter[i];
    }
    qsort(late, n_late, sizeof(int64_t), cmp_i64);
    int64_t late_p99 = n_late ? late[(int64_t)(0.99 * n_late)] : 0;
    printf("{\"sent\": %lld, \"received\": %lld, \"p50_ns\": %lld, \"p99_ns\": %lld, \"p999_ns\": %lld, "
           "\"max_ns\": %lld, \"jitter_ns\": %.1f, \"cpu_s\": %.4f, \"late_p99_ns\": %lld}\n",
           (long long)sent, (long long)received_total, (long long)percentile(0.50, received_total),
           (long long)percentile(0.99, received_total), (long long)percentile(0.999, received_total),
           (long long)delay_max, jit / n_streams, cpu1 - cpu0, (long long)late_p99);
    return 0;
}
