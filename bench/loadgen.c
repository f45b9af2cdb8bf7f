/* The load generator of bench/http.py: N simulated agents, each one keep-alive HTTP/1.1
 * connection looping authorize → commit (a commit only after an allow), on one epoll thread.
 *
 * Native rather than Python because on a 2-core machine a Python client (httpx, aiohttp) spends
 * as much CPU per request as the server it measures; wrk cannot chain a commit to the reservation
 * its own connection was given nor time authorizations apart from commits.
 *
 *     loadgen HOST PORT CONNECTIONS WARMUP_S MEASURE_S KEYS_FILE BODY_AMOUNT [RATE]
 *
 * RATE 0 (the default) is a closed loop: each agent starts its next pair as soon as the last one
 * ends. RATE > 0 paces the agents to that many authorizations a second in all, each agent on its
 * own fixed schedule (staggered); an agent that falls behind starts its next pair at once.
 * KEYS_FILE: one "agent key" pair a line; connection i acts as line i % lines.
 * Runs WARMUP_S seconds unmeasured, then MEASURE_S measured, then stops starting authorizations,
 * lets every connection finish its pair (so every hold is committed), and prints one JSON object.
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
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFFER_BYTES 65536
#define REQUEST_BYTES 1024
#define HISTOGRAM_US_MAX 10000000 /* latencies above 10 s land in the last bucket */
#define CONNECTIONS_MAX 4096

enum phase { WARMUP, MEASURE, DRAIN };
enum step { AUTHORIZE, COMMIT };

struct connection {
    int fd;
    enum step step;
    char agent[128];
    char key[256];
    char request[REQUEST_BYTES];
    int request_length, request_sent;
    char response[BUFFER_BYTES];
    int response_length;
    uint64_t started_us;
    int is_idle; /* finished its last pair during DRAIN */
    int is_waiting; /* paced: its next authorization is due at due_us */
    uint64_t due_us;
};

static uint64_t interval_us; /* paced: per agent, between authorizations; 0 = closed loop */

static uint32_t *authorize_histogram, *commit_histogram;
static uint64_t authorize_count, commit_count, allow_count, deny_count, other_decision_count;
static uint64_t error_count, total_authorize_count, total_commit_count, total_allow_count;
static char first_error[512];
static const char *host;
static int port;
static const char *amount;

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void note_error(const char *what, const char *detail) {
    error_count++;
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s: %.400s", what, detail);
}

static int open_connection(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &address.sin_addr);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) { perror("connect"); exit(2); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void prepare_authorize(struct connection *c) {
    char body[256];
    int body_length = snprintf(body, sizeof body,
        "{\"agent\":\"%s\",\"action\":\"bench.call\",\"amounts\":{\"usd\":\"%s\"}}", c->agent, amount);
    c->request_length = snprintf(c->request, REQUEST_BYTES,
        "POST /v1/authorize HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
        host, port, c->key, body_length, body);
    c->request_sent = 0;
    c->step = AUTHORIZE;
}

static void prepare_commit(struct connection *c, const char *reservation, int reservation_length) {
    c->request_length = snprintf(c->request, REQUEST_BYTES,
        "POST /v1/reservations/%.*s/commit HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        reservation_length, reservation, host, port, c->key);
    c->request_sent = 0;
    c->step = COMMIT;
}

static int send_pending(struct connection *c) {
    if (c->request_sent == 0) c->started_us = now_us();
    while (c->request_sent < c->request_length) {
        ssize_t n = write(c->fd, c->request + c->request_sent, (size_t)(c->request_length - c->request_sent));
        if (n < 0) {
            if (errno == EAGAIN) return 0;
            perror("write");
            exit(2);
        }
        c->request_sent += (int)n;
    }
    return 1;
}

/* Length of a complete response at the head of the buffer, or 0 if more bytes are needed. */
static int complete_length(struct connection *c, int *status, const char **body, int *body_length) {
    char *end = memmem(c->response, (size_t)c->response_length, "\r\n\r\n", 4);
    if (end == NULL) return 0;
    int header_length = (int)(end - c->response) + 4;
    *status = atoi(c->response + 9);
    int content_length = -1;
    for (char *line = strstr(c->response, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0) content_length = atoi(line + 17);
    }
    if (content_length < 0) { note_error("response without content-length", c->response); exit(2); }
    if (c->response_length < header_length + content_length) return 0;
    *body = c->response + header_length;
    *body_length = content_length;
    return header_length + content_length;
}

static void record(uint32_t *histogram, uint64_t latency_us) {
    histogram[latency_us < HISTOGRAM_US_MAX ? latency_us : HISTOGRAM_US_MAX - 1]++;
}

/* Handles one response; returns 1 if the connection should send its next request. */
static int on_response(struct connection *c, int status, const char *body, int body_length, enum phase phase) {
    uint64_t latency_us = now_us() - c->started_us;
    char text[BUFFER_BYTES];
    int length = body_length < BUFFER_BYTES - 1 ? body_length : BUFFER_BYTES - 1;
    memcpy(text, body, (size_t)length);
    text[length] = 0;
    if (status != 200) {
        note_error(c->step == AUTHORIZE ? "authorize" : "commit", text);
        prepare_authorize(c);
        return phase != DRAIN;
    }
    if (c->step == COMMIT) {
        total_commit_count++;
        if (phase == MEASURE) { commit_count++; record(commit_histogram, latency_us); }
        if (strstr(text, "\"status\":\"committed\"") == NULL) note_error("commit", text);
        prepare_authorize(c);
        return phase != DRAIN;
    }
    total_authorize_count++;
    if (phase == MEASURE) { authorize_count++; record(authorize_histogram, latency_us); }
    if (strstr(text, "\"decision\":\"allow\"") != NULL) {
        total_allow_count++;
        if (phase == MEASURE) allow_count++;
        char *reservation = strstr(text, "\"reservation\":\"");
        if (reservation == NULL) { note_error("allow without reservation", text); prepare_authorize(c); return 1; }
        reservation += 15;
        char *close = strchr(reservation, '"');
        prepare_commit(c, reservation, (int)(close - reservation));
        return 1; /* an allowed hold is always committed, draining or not */
    }
    if (phase == MEASURE) {
        if (strstr(text, "\"decision\":\"deny\"") != NULL) deny_count++; else other_decision_count++;
    }
    prepare_authorize(c);
    return phase != DRAIN;
}

static double percentile_ms(const uint32_t *histogram, uint64_t count, double fraction) {
    if (count == 0) return 0;
    uint64_t rank = (uint64_t)(fraction * (double)count), seen = 0;
    for (int us = 0; us < HISTOGRAM_US_MAX; us++) {
        seen += histogram[us];
        if (seen > rank) return us / 1000.0;
    }
    return HISTOGRAM_US_MAX / 1000.0;
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS WARMUP_S MEASURE_S KEYS_FILE AMOUNT [RATE]\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    int connections = atoi(argv[3]);
    double warmup_s = atof(argv[4]), measure_s = atof(argv[5]);
    amount = argv[7];
    double rate = argc == 9 ? atof(argv[8]) : 0;
    if (connections < 1 || connections > CONNECTIONS_MAX) { fprintf(stderr, "bad CONNECTIONS\n"); return 2; }

    static char agents[CONNECTIONS_MAX][128], keys[CONNECTIONS_MAX][256];
    int lines = 0;
    FILE *file = fopen(argv[6], "r");
    if (!file) { perror("keys file"); return 2; }
    while (lines < CONNECTIONS_MAX && fscanf(file, "%127s %255s", agents[lines], keys[lines]) == 2) lines++;
    fclose(file);
    if (lines == 0) { fprintf(stderr, "no keys\n"); return 2; }

    authorize_histogram = calloc(HISTOGRAM_US_MAX, sizeof(uint32_t));
    commit_histogram = calloc(HISTOGRAM_US_MAX, sizeof(uint32_t));
    struct connection *pool = calloc((size_t)connections, sizeof(struct connection));
    int epoll = epoll_create1(0);
    for (int i = 0; i < connections; i++) {
        struct connection *c = &pool[i];
        snprintf(c->agent, sizeof c->agent, "%s", agents[i % lines]);
        snprintf(c->key, sizeof c->key, "%s", keys[i % lines]);
        c->fd = open_connection();
        struct epoll_event event = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        epoll_ctl(epoll, EPOLL_CTL_ADD, c->fd, &event);
        prepare_authorize(c);
    }
    uint64_t started_us = now_us();
    if (rate > 0) interval_us = (uint64_t)(connections / rate * 1e6);
    for (int i = 0; i < connections; i++) {
        if (interval_us) {
            pool[i].due_us = started_us + interval_us * (uint64_t)i / (uint64_t)connections;
            pool[i].is_waiting = 1;
        } else {
            send_pending(&pool[i]);
        }
    }

    uint64_t measure_from_us = started_us + (uint64_t)(warmup_s * 1e6);
    uint64_t measure_until_us = measure_from_us + (uint64_t)(measure_s * 1e6);
    uint64_t measured_from_us = 0, measured_until_us = 0;
    enum phase phase = WARMUP;
    int idle = 0;
    struct epoll_event events[256];
    while (idle < connections) {
        int timeout_ms = 100;
        if (interval_us) {
            uint64_t soonest = UINT64_MAX, at = now_us();
            for (int i = 0; i < connections; i++)
                if (pool[i].is_waiting && pool[i].due_us < soonest) soonest = pool[i].due_us;
            /* Rounded up: rounding down made every sub-millisecond wait a busy spin (a core's worth of CPU). */
            if (soonest != UINT64_MAX) timeout_ms = soonest <= at ? 0 : (int)((soonest - at + 999) / 1000);
        }
        int ready = epoll_wait(epoll, events, 256, timeout_ms);
        uint64_t now = now_us();
        if (phase == WARMUP && now >= measure_from_us) { phase = MEASURE; measured_from_us = now; }
        if (phase == MEASURE && now >= measure_until_us) { phase = DRAIN; measured_until_us = now; }
        if (phase == DRAIN && now - measured_until_us > 60u * 1000000u) {
            note_error("drain", "connections still busy 60 s after the measured window");
            break;
        }
        for (int e = 0; e < ready; e++) {
            struct connection *c = events[e].data.ptr;
            if (c->is_idle) continue;
            if ((events[e].events & EPOLLOUT) && !c->is_waiting) send_pending(c);
            if (!(events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            for (;;) {
                ssize_t n = read(c->fd, c->response + c->response_length,
                                 (size_t)(BUFFER_BYTES - 1 - c->response_length));
                if (n == 0) { note_error("connection", "closed by the server"); exit(3); }
                if (n < 0) {
                    if (errno == EAGAIN) break;
                    perror("read");
                    exit(3);
                }
                c->response_length += (int)n;
                c->response[c->response_length] = 0;
                int status, body_length, used;
                const char *body;
                while ((used = complete_length(c, &status, &body, &body_length)) > 0) {
                    int is_next = on_response(c, status, body, body_length, phase);
                    memmove(c->response, c->response + used, (size_t)(c->response_length - used));
                    c->response_length -= used;
                    c->response[c->response_length] = 0;
                    if (!is_next) { c->is_idle = 1; idle++; }
                    else if (interval_us && c->step == AUTHORIZE) {
                        c->due_us += interval_us;
                        uint64_t at = now_us();
                        if (c->due_us + interval_us < at) c->due_us = at; /* missed slots are skipped */
                        c->is_waiting = 1;
                    } else send_pending(c);
                }
            }
        }
        if (interval_us) {
            uint64_t at = now_us();
            for (int i = 0; i < connections; i++) {
                struct connection *c = &pool[i];
                if (!c->is_waiting || c->due_us > at) continue;
                c->is_waiting = 0;
                if (phase == DRAIN) { c->is_idle = 1; idle++; continue; }
                send_pending(c);
            }
        }
    }
    double seconds = (double)(measured_until_us - measured_from_us) / 1e6;
    printf("{\"seconds\": %.3f, \"connections\": %d, \"authorizations\": %llu, \"commits\": %llu, "
           "\"allowed\": %llu, \"denied\": %llu, \"other_decisions\": %llu, \"errors\": %llu, "
           "\"total_authorizations\": %llu, \"total_allowed\": %llu, \"total_commits\": %llu, "
           "\"decisions_per_s\": %.1f, \"requests_per_s\": %.1f, "
           "\"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, "
           "\"commit_p50_ms\": %.3f, \"commit_p99_ms\": %.3f, \"first_error\": \"",
           seconds, connections, (unsigned long long)authorize_count, (unsigned long long)commit_count,
           (unsigned long long)allow_count, (unsigned long long)deny_count,
           (unsigned long long)other_decision_count, (unsigned long long)error_count,
           (unsigned long long)total_authorize_count, (unsigned long long)total_allow_count,
           (unsigned long long)total_commit_count,
           authorize_count / seconds, (authorize_count + commit_count) / seconds,
           percentile_ms(authorize_histogram, authorize_count, 0.50),
           percentile_ms(authorize_histogram, authorize_count, 0.90),
           percentile_ms(authorize_histogram, authorize_count, 0.99),
           percentile_ms(authorize_histogram, authorize_count, 1.0 - 1e-12),
           percentile_ms(commit_histogram, commit_count, 0.50),
           percentile_ms(commit_histogram, commit_count, 0.99));
    for (const char *p = first_error; *p; p++) {
        if (*p == '"' || *p == '\\') putchar('\\');
        putchar(*p >= 32 ? *p : ' ');
    }
    printf("\"}\n");
    return 0;
}
