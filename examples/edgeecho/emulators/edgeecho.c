/*
 * edgeecho: the three network emulators of the edgeECHO pipeline in one program.
 *
 *   edgeecho probe          listens, sends `count` data messages and a terminate
 *   edgeecho stream         connects to the probe, relays its messages to the
 *                           segmentation (or, plain, to whoever is connected)
 *   edgeecho segmentation   connects to the stream and counts data messages
 *
 * Wire format (TCP, ASCII): JSON objects {"sender": "<name>", "type": <int>,
 * "data": <value>} each followed by one ';'. Types: 1 data, 2 terminate, 3 connect.
 *
 * Configuration comes from environment variables (see README.md). The last line
 * on stdout is always a summary object:
 *   {"role": "segmentation", "data_messages": 1000, "terminate": true}
 *
 * Exit codes: 0 ok, 1 usage or internal error, 2 missing or bad environment
 * variable, 3 cannot resolve / connect / listen, 4 peer closed early or protocol
 * error, 5 timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum {
    EXIT_OK = 0,
    EXIT_USAGE = 1,
    EXIT_ENV = 2,
    EXIT_NET = 3,
    EXIT_PEER = 4,
    EXIT_TIMEOUT = 5,
};

enum { TYPE_DATA = 1, TYPE_TERMINATE = 2, TYPE_CONNECT = 3 };

#define READ_CHUNK (64 * 1024)
#define MAX_MESSAGE (1024 * 1024)          /* one message without ';' may not exceed this */
#define FLUSH_AT (64 * 1024)               /* probe: send once this much is queued */
#define CLIENT_BACKLOG_MAX (64 * 1024 * 1024) /* plain stream: drop a client this far behind */
#define CLOSE_DRAIN_MS 5000                /* longest wait for the peer's FIN when closing */
#define RETRY_DELAY_MS 200

/* ---------------------------------------------------------------- state, exit */

static const char *g_role = "edgeecho";
static unsigned long long g_data_messages;
static int g_terminate;
static double g_timeout = 300.0;

static void print_summary(void)
{
    printf("{\"role\": \"%s\", \"data_messages\": %llu, \"terminate\": %s}\n", g_role,
           g_data_messages, g_terminate ? "true" : "false");
    fflush(stdout);
}

static void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void progress(const char *fmt, ...)
{
    va_list ap;
    printf("%s: ", g_role);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: warning: ", g_role);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

/* Report an error on stderr, print the summary as the last stdout line, exit. */
static void die(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void die(int code, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: error: ", g_role);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    print_summary();
    exit(code);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t deadline_after_timeout(void)
{
    return now_ms() + (int64_t)(g_timeout * 1000.0);
}

static int remaining_ms(int64_t deadline)
{
    int64_t left = deadline - now_ms();
    if (left < 0)
        return 0;
    if (left > 0x7fffffff)
        return 0x7fffffff;
    return (int)left;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (q == NULL)
        die(EXIT_USAGE, "out of memory (%zu bytes)", n);
    return q;
}

/* ---------------------------------------------------------------- environment */

static const char *env_required(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        die(EXIT_ENV, "environment variable %s is missing or empty", name);
    return v;
}

static unsigned long long parse_unsigned(const char *name, const char *v, unsigned long long max)
{
    char *end;
    unsigned long long n;
    if (!isdigit((unsigned char)v[0]))
        die(EXIT_ENV, "environment variable %s must be a non-negative integer, got '%s'", name, v);
    errno = 0;
    n = strtoull(v, &end, 10);
    if (errno != 0 || *end != '\0' || n > max)
        die(EXIT_ENV, "environment variable %s must be an integer from 0 to %llu, got '%s'", name,
            max, v);
    return n;
}

static const char *env_port(const char *name)
{
    const char *v = env_required(name);
    char *end = NULL;
    unsigned long n;
    errno = 0;
    n = isdigit((unsigned char)v[0]) ? strtoul(v, &end, 10) : 0;
    if (errno != 0 || n < 1 || n > 65535 || *end != '\0')
        die(EXIT_ENV, "environment variable %s must be a port from 1 to 65535, got '%s'", name, v);
    return v;
}

/* The seed's reading of a flag: `os.environ[name] == 'True'`, i.e. only Python's rendering
 * of True is true; anything else (`true`, `1`, `False`) is false. */
static int env_seed_bool(const char *name)
{
    return strcmp(env_required(name), "True") == 0;
}

static void env_timeout(void)
{
    const char *v = getenv("timeout");
    char *end;
    double t;
    if (v == NULL || *v == '\0')
        return;
    errno = 0;
    t = strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(t > 0.0) || t > 2000000.0)
        die(EXIT_ENV, "environment variable timeout must be a number of seconds > 0, got '%s'", v);
    g_timeout = t;
}

static int env_retries(void)
{
    const char *v = getenv("connect_retries");
    if (v == NULL || *v == '\0')
        return 0;
    return (int)parse_unsigned("connect_retries", v, 1000000);
}

/* ---------------------------------------------------------------- message parsing */

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && is_ws(s[i]))
        i++;
    return i;
}

/* *i is at an opening quote; move it past the closing quote. */
static int skip_string(const char *s, size_t n, size_t *i)
{
    size_t j = *i + 1;
    while (j < n) {
        if (s[j] == '\\') {
            j += 2;
            continue;
        }
        if (s[j] == '"') {
            *i = j + 1;
            return 0;
        }
        j++;
    }
    return -1;
}

/* Skip one member value; *i ends on the ',' or '}' that follows it. */
static int skip_value(const char *s, size_t n, size_t *i)
{
    int depth = 0;
    size_t j = *i;
    while (j < n) {
        char c = s[j];
        if (c == '"') {
            if (skip_string(s, n, &j) != 0)
                return -1;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                break;
            depth--;
        } else if (c == ',' && depth == 0) {
            break;
        }
        j++;
    }
    if (j >= n || depth != 0)
        return -1;
    *i = j;
    return 0;
}

/*
 * Find a top-level member of the object in s[0..n). Returns 1 and the value's
 * span [*vs, *ve) when found, 0 when the object has no such key, -1 when the
 * text is not an object we can read.
 */
static int find_member(const char *s, size_t n, const char *key, size_t *vs, size_t *ve)
{
    size_t klen = strlen(key);
    size_t i = skip_ws(s, n, 0);
    if (i >= n || s[i] != '{')
        return -1;
    i = skip_ws(s, n, i + 1);
    if (i < n && s[i] == '}')
        return 0;
    for (;;) {
        size_t ks, ke, v0, v1;
        if (i >= n || s[i] != '"')
            return -1;
        ks = i + 1;
        if (skip_string(s, n, &i) != 0)
            return -1;
        ke = i - 1;
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != ':')
            return -1;
        i = skip_ws(s, n, i + 1);
        v0 = i;
        if (skip_value(s, n, &i) != 0)
            return -1;
        v1 = i;
        while (v1 > v0 && is_ws(s[v1 - 1]))
            v1--;
        if (v1 == v0)
            return -1;
        if (ke - ks == klen && memcmp(s + ks, key, klen) == 0) {
            *vs = v0;
            *ve = v1;
            return 1;
        }
        if (s[i] == '}')
            return 0;
        i = skip_ws(s, n, i + 1);
    }
}

/* The integer after "type": (a quoted integer is tolerated). */
static int message_type(const char *s, size_t n, long *type)
{
    size_t vs, ve, i;
    long sign = 1, v = 0;
    if (find_member(s, n, "type", &vs, &ve) != 1)
        return -1;
    if (ve - vs >= 2 && s[vs] == '"' && s[ve - 1] == '"') {
        vs++;
        ve--;
    }
    i = vs;
    if (i < ve && (s[i] == '-' || s[i] == '+'))
        sign = s[i++] == '-' ? -1 : 1;
    if (i >= ve)
        return -1;
    for (; i < ve; i++) {
        if (!isdigit((unsigned char)s[i]) || v > 100000000L)
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *type = sign * v;
    return 0;
}

/* A short, printable excerpt of a message for error output. */
static const char *excerpt(const char *s, size_t n)
{
    static char out[128];
    size_t k = 0;
    for (size_t i = 0; i < n && k < sizeof out - 4; i++)
        out[k++] = isprint((unsigned char)s[i]) ? s[i] : '?';
    if (n > k)
        out[k++] = '.', out[k++] = '.', out[k++] = '.';
    out[k] = '\0';
    return out;
}

/* ---------------------------------------------------------------- buffers, sockets */

struct buf {
    char *p;
    size_t len, cap, off; /* off: bytes already sent from p */
};

static void buf_append(struct buf *b, const char *s, size_t n)
{
    if (b->off > 0 && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + n > b->cap) {
        if (b->off > 0) {
            memmove(b->p, b->p + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            size_t cap = b->cap ? b->cap : 4096;
            while (cap < b->len + n)
                cap *= 2;
            b->p = xrealloc(b->p, cap);
            b->cap = cap;
        }
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_appendf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_appendf(struct buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    int k;
    va_start(ap, fmt);
    k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof tmp)
        die(EXIT_USAGE, "internal error: message too long");
    buf_append(b, tmp, (size_t)k);
}

static size_t buf_pending(const struct buf *b)
{
    return b->len - b->off;
}

/* Send what the socket takes without blocking. 0 ok (maybe still pending), -1 error. */
static int buf_flush_nb(int fd, struct buf *b)
{
    while (b->off < b->len) {
        ssize_t k = send(fd, b->p + b->off, b->len - b->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            b->off += (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (k == 0)
            errno = EPIPE;
        return -1;
    }
    b->off = b->len = 0;
    return 0;
}

/* Send everything, waiting at most `timeout` for the peer to take more. */
static void buf_flush_all(int fd, struct buf *b, const char *peer)
{
    while (buf_pending(b) > 0) {
        struct pollfd p = { fd, POLLOUT, 0 };
        int r;
        if (buf_flush_nb(fd, b) != 0)
            die(EXIT_PEER, "sending to %s failed: %s", peer, strerror(errno));
        if (buf_pending(b) == 0)
            break;
        r = poll(&p, 1, remaining_ms(deadline_after_timeout()));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(EXIT_USAGE, "poll: %s", strerror(errno));
        if (r == 0)
            die(EXIT_TIMEOUT, "timed out after %gs sending to %s (it does not read)", g_timeout,
                peer);
    }
}

static void send_message(int fd, const char *peer, const char *sender, int type, long long data)
{
    struct buf b = { 0 };
    buf_appendf(&b, "{\"sender\": \"%s\", \"type\": %d, \"data\": %lld};", sender, type, data);
    buf_flush_all(fd, &b, peer);
    free(b.p);
}

/* Wait until fd has `events`; exit with a timeout error naming `what`. */
static void wait_fd(int fd, short events, int64_t deadline, const char *what)
{
    for (;;) {
        struct pollfd p = { fd, events, 0 };
        int r = poll(&p, 1, remaining_ms(deadline));
        if (r > 0)
            return;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(EXIT_USAGE, "poll: %s", strerror(errno));
        die(EXIT_TIMEOUT, "timed out after %gs waiting for %s", g_timeout, what);
    }
}

/* Half-close, wait (briefly) for the peers' FIN so nothing is lost to a reset, close. */
static void close_gracefully(const int *fds, size_t n)
{
    struct pollfd *p = xrealloc(NULL, (n ? n : 1) * sizeof *p);
    int64_t deadline = now_ms() + (g_timeout * 1000.0 < CLOSE_DRAIN_MS ? (int64_t)(g_timeout * 1000.0)
                                                                      : CLOSE_DRAIN_MS);
    size_t open = 0;
    for (size_t i = 0; i < n; i++) {
        p[i].fd = fds[i];
        p[i].events = POLLIN;
        if (fds[i] >= 0) {
            shutdown(fds[i], SHUT_WR);
            open++;
        } else {
            p[i].fd = -1;
        }
    }
    while (open > 0) {
        int r = poll(p, n, remaining_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        for (size_t i = 0; i < n; i++) {
            char scratch[4096];
            ssize_t k;
            if (p[i].fd < 0 || p[i].revents == 0)
                continue;
            k = recv(p[i].fd, scratch, sizeof scratch, MSG_DONTWAIT);
            if (k > 0 || (k < 0 && (errno == EINTR || errno == EAGAIN)))
                continue;
            p[i].fd = -1;
            open--;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(p);
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void describe_addr(const struct sockaddr *sa, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
    }
    snprintf(out, n, "%s:%u", host, port);
}

static int listen_on(const char *port_name, const char *port)
{
    struct sockaddr_in a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die(EXIT_USAGE, "socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons((uint16_t)atoi(port));
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die(EXIT_NET, "cannot listen on 0.0.0.0:%s (%s): %s", port, port_name, strerror(errno));
    if (listen(fd, 64) != 0)
        die(EXIT_NET, "cannot listen on 0.0.0.0:%s (%s): %s", port, port_name, strerror(errno));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    progress("listening on 0.0.0.0:%s", port);
    return fd;
}

/* Accept without blocking: -1 when nobody is waiting. The new socket is blocking. */
static int accept_nb(int lfd, char *addr, size_t addrlen)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd;
    for (;;) {
        fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
        if (fd >= 0)
            break;
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -1;
        die(EXIT_NET, "accept: %s", strerror(errno));
    }
    set_nodelay(fd);
    describe_addr((struct sockaddr *)&ss, addr, addrlen);
    return fd;
}

static int accept_one(int lfd, const char *who)
{
    int64_t deadline = deadline_after_timeout();
    char what[128], addr[96];
    snprintf(what, sizeof what, "%s to connect", who);
    for (;;) {
        int fd;
        wait_fd(lfd, POLLIN, deadline, what);
        fd = accept_nb(lfd, addr, sizeof addr);
        if (fd >= 0) {
            progress("%s connected from %s", who, addr);
            return fd;
        }
    }
}

/* One connection attempt to one address, bounded by the timeout. 0 ok, else errno. */
static int try_connect(const struct addrinfo *ai, int *out)
{
    int err = 0;
    socklen_t el = sizeof err;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0)
        return errno;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) {
            err = errno;
            close(fd);
            return err;
        }
        for (;;) {
            struct pollfd p = { fd, POLLOUT, 0 };
            int r = poll(&p, 1, remaining_ms(deadline_after_timeout()));
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                close(fd);
                return r == 0 ? ETIMEDOUT : errno;
            }
            break;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err != 0) {
            close(fd);
            return err;
        }
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    set_nodelay(fd);
    *out = fd;
    return 0;
}

/* Connect to `who` at host:port, with `retries` more attempts RETRY_DELAY_MS apart. */
static int connect_to(const char *who, const char *host, const char *port, int retries)
{
    for (int attempt = 0;; attempt++) {
        struct addrinfo hints, *res = NULL;
        char reason[256];
        int rc, err = 0, fd = -1;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        rc = getaddrinfo(host, port, &hints, &res);
        if (rc != 0) {
            snprintf(reason, sizeof reason, "cannot resolve the name '%s': %s", host,
                     rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        } else {
            for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
                err = try_connect(ai, &fd);
                if (err == 0) {
                    char addr[96];
                    describe_addr(ai->ai_addr, addr, sizeof addr);
                    freeaddrinfo(res);
                    progress("connected to the %s at %s:%s (%s)", who, host, port, addr);
                    return fd;
                }
            }
            freeaddrinfo(res);
            snprintf(reason, sizeof reason, "%s", strerror(err));
        }
        if (attempt >= retries)
            die(err == ETIMEDOUT ? EXIT_TIMEOUT : EXIT_NET,
                "cannot connect to the %s at %s:%s: %s (%d attempt%s%s%s%s)", who, host, port,
                reason, attempt + 1, attempt ? "s" : "",
                err == ECONNREFUSED ? "; is the " : "", err == ECONNREFUSED ? who : "",
                err == ECONNREFUSED ? " listening yet?" : "");
        progress("cannot connect to the %s at %s:%s (%s), retrying (%d/%d)", who, host, port, reason,
                 attempt + 1, retries);
        sleep_ms(RETRY_DELAY_MS);
    }
}

/* ---------------------------------------------------------------- message reader */

struct reader {
    int fd;
    const char *peer;
    char *buf;
    size_t start, end, cap;
};

static void reader_init(struct reader *r, int fd, const char *peer)
{
    r->fd = fd;
    r->peer = peer;
    r->cap = READ_CHUNK * 2;
    r->buf = xrealloc(NULL, r->cap);
    r->start = r->end = 0;
}

/* Next complete message already buffered (trimmed, without ';'): 1, or 0 if none. */
static int reader_next(struct reader *r, const char **m, size_t *n)
{
    for (;;) {
        char *semi = memchr(r->buf + r->start, ';', r->end - r->start);
        size_t a, b;
        if (semi == NULL) {
            if (r->end - r->start > MAX_MESSAGE)
                die(EXIT_PEER, "%s sent more than %d bytes without a ';'", r->peer, MAX_MESSAGE);
            return 0;
        }
        a = r->start;
        b = (size_t)(semi - r->buf);
        r->start = b + 1;
        while (a < b && is_ws(r->buf[a]))
            a++;
        while (b > a && is_ws(r->buf[b - 1]))
            b--;
        if (a == b)
            continue;
        *m = r->buf + a;
        *n = b - a;
        return 1;
    }
}

/* Read what is available (call after poll says readable). >0 bytes, 0 EOF, -1 error. */
static ssize_t reader_fill(struct reader *r)
{
    ssize_t k;
    if (r->start == r->end) {
        r->start = r->end = 0;
    } else if (r->start > 0 && r->cap - r->end < READ_CHUNK) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    if (r->cap - r->end < READ_CHUNK) {
        r->cap *= 2;
        r->buf = xrealloc(r->buf, r->cap);
    }
    do
        k = recv(r->fd, r->buf + r->end, r->cap - r->end, 0);
    while (k < 0 && errno == EINTR);
    if (k > 0)
        r->end += (size_t)k;
    return k;
}

static const char *closed_early(const struct reader *r)
{
    return r->end > r->start ? " (in the middle of a message)" : "";
}

/* Block (bounded by the timeout) until the next message arrives. */
static void reader_wait(struct reader *r, const char **m, size_t *n, const char *what)
{
    int64_t deadline = deadline_after_timeout();
    while (!reader_next(r, m, n)) {
        ssize_t k;
        wait_fd(r->fd, POLLIN, deadline, what);
        k = reader_fill(r);
        if (k == 0)
            die(EXIT_PEER, "%s closed the connection while we waited for %s%s", r->peer, what,
                closed_early(r));
        if (k < 0)
            die(EXIT_PEER, "reading from %s failed while we waited for %s: %s", r->peer, what,
                strerror(errno));
        deadline = deadline_after_timeout();
    }
}

static long type_or_die(const struct reader *r, const char *m, size_t n)
{
    long type;
    if (message_type(m, n, &type) != 0)
        die(EXIT_PEER, "%s sent a message without a readable integer \"type\": %s", r->peer,
            excerpt(m, n));
    return type;
}

/* Wait for the peer's connect message (type 3); other messages before it are skipped. */
static void expect_connect(struct reader *r)
{
    char what[128];
    snprintf(what, sizeof what, "the connect message of %s", r->peer);
    for (;;) {
        const char *m;
        size_t n;
        long type;
        reader_wait(r, &m, &n, what);
        type = type_or_die(r, m, n);
        if (type == TYPE_CONNECT) {
            progress("%s sent connect", r->peer);
            return;
        }
        warn("skipping a type %ld message from %s before its connect: %s", type, r->peer,
             excerpt(m, n));
    }
}

/* Append m to out as a message from `sender` (the "sender" value is replaced). */
static void append_as_sender(struct buf *out, const char *m, size_t n, const char *sender)
{
    size_t vs, ve;
    char quoted[64];
    int q = snprintf(quoted, sizeof quoted, "\"%s\"", sender);
    if (find_member(m, n, "sender", &vs, &ve) == 1) {
        buf_append(out, m, vs);
        buf_append(out, quoted, (size_t)q);
        buf_append(out, m + ve, n - ve);
    } else {
        /* no sender member: add one right after the opening brace */
        size_t brace = skip_ws(m, n, 0) + 1;
        size_t next = skip_ws(m, n, brace);
        buf_append(out, m, brace);
        buf_append(out, "\"sender\": ", 10);
        buf_append(out, quoted, (size_t)q);
        if (next < n && m[next] != '}')
            buf_append(out, ", ", 2);
        buf_append(out, m + brace, n - brace);
    }
    buf_append(out, ";", 1);
}

/* ---------------------------------------------------------------- probe */

static int run_probe(void)
{
    const char *ip = getenv("probe_ip");
    const char *port = env_port("probe_port");
    unsigned long long count = parse_unsigned("count", env_required("count"), 1000000000000ULL);
    struct buf out = { 0 };
    struct reader r;
    int lfd, fd;
    unsigned long long seq, queued = 0;
    int64_t t0;

    const char *warm = getenv("warmup_ms");
    unsigned long long warmup = warm && *warm ? parse_unsigned("warmup_ms", warm, 600000ULL) : 0;

    env_timeout();
    progress("probe_ip=%s probe_port=%s count=%llu timeout=%gs warmup=%llums",
             ip && *ip ? ip : "(unset)", port, count, g_timeout, warmup);
    if (warmup > 0) { /* a sensor that needs a moment before it listens */
        struct timespec pause = { (time_t)(warmup / 1000), (long)(warmup % 1000) * 1000000L };
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
            ;
    }
    lfd = listen_on("probe_port", port);
    fd = accept_one(lfd, "the stream");
    close(lfd);
    reader_init(&r, fd, "the stream");

    send_message(fd, r.peer, "probe", TYPE_CONNECT, 1);
    expect_connect(&r);

    t0 = now_ms();
    for (seq = 1; seq <= count; seq++) {
        buf_appendf(&out, "{\"sender\": \"probe\", \"type\": %d, \"data\": %llu};", TYPE_DATA, seq);
        queued++;
        if (out.len >= FLUSH_AT) {
            buf_flush_all(fd, &out, r.peer);
            g_data_messages = queued;
        }
    }
    buf_appendf(&out, "{\"sender\": \"probe\", \"type\": %d, \"data\": %llu};", TYPE_TERMINATE,
                count);
    buf_flush_all(fd, &out, r.peer);
    g_data_messages = queued;
    g_terminate = 1;
    progress("sent %llu data messages and terminate in %lld ms", g_data_messages,
             (long long)(now_ms() - t0));
    close_gracefully(&fd, 1);
    free(out.p);
    free(r.buf);
    return EXIT_OK;
}

/* ---------------------------------------------------------------- stream */

struct client {
    int fd;
    char addr[96];
    struct buf out;
};

static void drop_client(struct client *cs, size_t *n, size_t i, const char *why)
{
    progress("dropping client %s: %s", cs[i].addr, why);
    close(cs[i].fd);
    free(cs[i].out.p);
    cs[i] = cs[--*n];
}

/* Handle one message from the probe. Returns 1 on terminate. */
static int stream_handle(const struct reader *pr, const char *m, size_t n, struct client *cs,
                         size_t ncs)
{
    long type = type_or_die(pr, m, n);
    if (type == TYPE_CONNECT) {
        warn("ignoring a second connect from the probe");
        return 0;
    }
    if (type == TYPE_DATA)
        g_data_messages++;
    else if (type != TYPE_TERMINATE)
        warn("relaying a message of unknown type %ld", type);
    for (size_t i = 0; i < ncs; i++)
        append_as_sender(&cs[i].out, m, n, "stream");
    return type == TYPE_TERMINATE;
}

static void probe_gone(const struct reader *pr, ssize_t k)
{
    if (k == 0)
        die(EXIT_PEER, "the probe closed the connection before its terminate%s", closed_early(pr));
    die(EXIT_PEER, "reading from the probe failed before its terminate: %s", strerror(errno));
}

/* Segmented: one segmentation client, which must stay until the terminate. */
static void stream_segmented(int pfd, struct reader *pr, const char *port)
{
    int lfd = listen_on("stream_port", port);
    struct client seg = { 0 };
    int64_t deadline;
    char scratch[4096];
    int done = 0;

    /* wait for the segmentation, noticing if the probe gives up meanwhile */
    deadline = deadline_after_timeout();
    for (;;) {
        struct pollfd p[2] = { { lfd, POLLIN, 0 }, { pfd, POLLIN, 0 } };
        int r = poll(p, 2, remaining_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(EXIT_USAGE, "poll: %s", strerror(errno));
        if (r == 0)
            die(EXIT_TIMEOUT, "timed out after %gs waiting for the segmentation to connect",
                g_timeout);
        if (p[1].revents) {
            ssize_t k = reader_fill(pr);
            if (k <= 0)
                probe_gone(pr, k);
        }
        if (p[0].revents) {
            seg.fd = accept_nb(lfd, seg.addr, sizeof seg.addr);
            if (seg.fd >= 0)
                break;
        }
    }
    close(lfd);
    progress("segmentation connected from %s", seg.addr);

    send_message(pfd, "the probe", "stream", TYPE_CONNECT, 1);
    progress("sent connect to the probe; relaying");

    deadline = deadline_after_timeout();
    while (!done) {
        struct pollfd p[2] = { { pfd, POLLIN, 0 }, { seg.fd, POLLIN, 0 } };
        const char *m;
        size_t n;
        int r;
        while (!done && reader_next(pr, &m, &n))
            done = stream_handle(pr, m, n, &seg, 1);
        buf_flush_all(seg.fd, &seg.out, "the segmentation");
        if (done)
            break;
        r = poll(p, 2, remaining_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(EXIT_USAGE, "poll: %s", strerror(errno));
        if (r == 0)
            die(EXIT_TIMEOUT, "timed out after %gs waiting for messages from the probe",
                g_timeout);
        if (p[1].revents) {
            ssize_t k = recv(seg.fd, scratch, sizeof scratch, MSG_DONTWAIT);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
                die(EXIT_PEER, "the segmentation closed the connection before the terminate%s%s",
                    k < 0 ? ": " : "", k < 0 ? strerror(errno) : "");
        }
        if (p[0].revents) {
            ssize_t k = reader_fill(pr);
            if (k <= 0)
                probe_gone(pr, k);
            deadline = deadline_after_timeout();
        }
    }
    g_terminate = 1;
    progress("relayed %llu data messages and terminate to the segmentation", g_data_messages);
    {
        int fds[2] = { seg.fd, pfd };
        close_gracefully(fds, 2);
    }
    free(seg.out.p);
}

/* Plain: relay to whoever is connected; nobody is waited for. */
static void stream_plain(int pfd, struct reader *pr, const char *port)
{
    int lfd = listen_on("stream_port", port);
    struct client *cs = NULL;
    struct pollfd *p = NULL;
    size_t ncs = 0, cap = 0, served = 0;
    int64_t deadline;
    int done = 0;

    send_message(pfd, "the probe", "stream", TYPE_CONNECT, 1);
    progress("sent connect to the probe; relaying to whoever connects");

    deadline = deadline_after_timeout();
    for (;;) {
        const char *m;
        size_t n, np;
        int r;
        while (!done && reader_next(pr, &m, &n))
            done = stream_handle(pr, m, n, cs, ncs);
        for (size_t i = 0; i < ncs;) {
            if (buf_flush_nb(cs[i].fd, &cs[i].out) != 0)
                drop_client(cs, &ncs, i, strerror(errno));
            else if (buf_pending(&cs[i].out) > CLIENT_BACKLOG_MAX)
                drop_client(cs, &ncs, i, "too far behind (it does not read)");
            else
                i++;
        }
        if (done)
            break;

        p = xrealloc(p, (ncs + 2) * sizeof *p);
        p[0] = (struct pollfd){ pfd, POLLIN, 0 };
        p[1] = (struct pollfd){ lfd, POLLIN, 0 };
        for (size_t i = 0; i < ncs; i++)
            p[2 + i] = (struct pollfd){ cs[i].fd,
                                        (short)(POLLIN | (buf_pending(&cs[i].out) ? POLLOUT : 0)),
                                        0 };
        np = ncs + 2;
        r = poll(p, np, remaining_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(EXIT_USAGE, "poll: %s", strerror(errno));
        if (r == 0)
            die(EXIT_TIMEOUT, "timed out after %gs waiting for messages from the probe",
                g_timeout);

        /* clients (backwards, so dropping one does not disturb the rest) */
        for (size_t j = np; j-- > 2;) {
            size_t i = j - 2;
            char scratch[4096];
            if (p[j].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t k = recv(cs[i].fd, scratch, sizeof scratch, MSG_DONTWAIT);
                if (k == 0) {
                    drop_client(cs, &ncs, i, "went away");
                    continue;
                }
                if (k < 0 && errno != EAGAIN && errno != EINTR) {
                    drop_client(cs, &ncs, i, strerror(errno));
                    continue;
                }
            }
        }
        if (p[1].revents) {
            char addr[96];
            int fd;
            while ((fd = accept_nb(lfd, addr, sizeof addr)) >= 0) {
                if (ncs == cap) {
                    cap = cap ? cap * 2 : 8;
                    cs = xrealloc(cs, cap * sizeof *cs);
                }
                cs[ncs] = (struct client){ .fd = fd };
                snprintf(cs[ncs].addr, sizeof cs[ncs].addr, "%s", addr);
                ncs++;
                served++;
                progress("client connected from %s", addr);
            }
        }
        if (p[0].revents) {
            ssize_t k = reader_fill(pr);
            if (k <= 0)
                probe_gone(pr, k);
            deadline = deadline_after_timeout();
        }
    }
    close(lfd);
    g_terminate = 1;

    /* deliver what is queued to the clients still here, then close everyone */
    deadline = deadline_after_timeout();
    for (;;) {
        size_t waiting = 0;
        int r;
        p = xrealloc(p, (ncs ? ncs : 1) * sizeof *p);
        for (size_t i = 0; i < ncs; i++) {
            p[i] = (struct pollfd){ cs[i].fd, buf_pending(&cs[i].out) ? POLLOUT : 0, 0 };
            waiting += buf_pending(&cs[i].out) > 0;
        }
        if (waiting == 0)
            break;
        r = poll(p, ncs, remaining_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            warn("gave up delivering to %zu slow client(s) after %gs", waiting, g_timeout);
            break;
        }
        for (size_t i = ncs; i-- > 0;)
            if (p[i].revents && buf_flush_nb(cs[i].fd, &cs[i].out) != 0)
                drop_client(cs, &ncs, i, strerror(errno));
    }
    progress("relayed %llu data messages and terminate; %zu client(s) connected, %zu to the end",
             g_data_messages, served, ncs);
    {
        int *fds = xrealloc(NULL, (ncs + 1) * sizeof *fds);
        for (size_t i = 0; i < ncs; i++) {
            fds[i] = cs[i].fd;
            free(cs[i].out.p);
        }
        fds[ncs] = pfd;
        close_gracefully(fds, ncs + 1);
        free(fds);
    }
    free(cs);
    free(p);
}

static int run_stream(void)
{
    const char *probe_ip = env_required("probe_ip");
    const char *probe_port = env_port("probe_port");
    const char *stream_ip = getenv("stream_ip");
    const char *stream_port = env_port("stream_port");
    int plain = env_seed_bool("plain_stream");
    int retries = env_retries();
    struct reader pr;
    int pfd;

    env_timeout();
    progress("probe=%s:%s stream_ip=%s stream_port=%s plain_stream=%s timeout=%gs", probe_ip,
             probe_port, stream_ip && *stream_ip ? stream_ip : "(unset)", stream_port,
             plain ? "true" : "false", g_timeout);
    pfd = connect_to("probe", probe_ip, probe_port, retries);
    reader_init(&pr, pfd, "the probe");
    expect_connect(&pr);
    if (plain)
        stream_plain(pfd, &pr, stream_port);
    else
        stream_segmented(pfd, &pr, stream_port);
    free(pr.buf);
    return EXIT_OK;
}

/* ---------------------------------------------------------------- segmentation */

static int run_segmentation(void)
{
    const char *stream_ip = env_required("stream_ip");
    const char *stream_port = env_port("stream_port");
    int retries = env_retries();
    struct reader r;
    int fd;
    int64_t deadline, t0 = 0;

    env_timeout();
    progress("stream=%s:%s timeout=%gs", stream_ip, stream_port, g_timeout);
    fd = connect_to("stream", stream_ip, stream_port, retries);
    reader_init(&r, fd, "the stream");

    deadline = deadline_after_timeout();
    while (!g_terminate) {
        const char *m;
        size_t n;
        ssize_t k;
        while (!g_terminate && reader_next(&r, &m, &n)) {
            long type = type_or_die(&r, m, n);
            if (type == TYPE_DATA) {
                if (g_data_messages++ == 0) {
                    t0 = now_ms();
                    progress("first data message received");
                }
            } else if (type == TYPE_TERMINATE) {
                g_terminate = 1;
            } else if (type == TYPE_CONNECT) {
                progress("the stream sent connect");
            } else {
                warn("ignoring a message of unknown type %ld: %s", type, excerpt(m, n));
            }
        }
        if (g_terminate)
            break;
        wait_fd(fd, POLLIN, deadline, "messages from the stream");
        k = reader_fill(&r);
        if (k == 0)
            die(EXIT_PEER, "the stream closed the connection before the terminate%s",
                closed_early(&r));
        if (k < 0)
            die(EXIT_PEER, "reading from the stream failed before the terminate: %s",
                strerror(errno));
        deadline = deadline_after_timeout();
    }
    progress("terminate received after %llu data messages (%lld ms from the first)",
             g_data_messages, g_data_messages ? (long long)(now_ms() - t0) : 0LL);
    close_gracefully(&fd, 1);
    free(r.buf);
    return EXIT_OK;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    int rc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
    signal(SIGPIPE, SIG_IGN);

    if (argc != 2) {
        fprintf(stderr, "usage: %s probe|stream|segmentation  (configuration in environment "
                        "variables, see README.md)\n",
                argv[0]);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "probe") == 0) {
        g_role = "probe";
        rc = run_probe();
    } else if (strcmp(argv[1], "stream") == 0) {
        g_role = "stream";
        rc = run_stream();
    } else if (strcmp(argv[1], "segmentation") == 0) {
        g_role = "segmentation";
        rc = run_segmentation();
    } else {
        fprintf(stderr, "edgeecho: unknown role '%s' (expected probe, stream or segmentation)\n",
                argv[1]);
        return EXIT_USAGE;
    }
    print_summary();
    return rc;
}
