/* A fake OpenAI-compatible upstream for the integration tests and the gateway
 * benchmark. One thread per connection, so a response may simply sleep.
 *
 * Behaviour is chosen per request by a line in the last user message (or prompt):
 *   fake: key=NAME chunks=N delay_ms=D first_delay_ms=D status=S fail_times=K
 *         retry_after=SECS stall_after=N drop_after=N malformed_after=N
 *         echo_key=N error_after=N pings=N sse=1 norole=1 error_type=T
 * error_type sets the error's "type" (default fake_error) in error answers. norole=1 leaves the role out of the first chunk, as llama-server does. sse=1 answers with an event stream even when the request does not ask for one. pings sends N ": ping" comments, 100 ms apart, before the first chunk. echo_key puts the request's bearer key into error messages after N filler
 * characters (a key that a cut of the message would straddle); error_after sends an
 * error event after N chunks of a stream. key names a scenario for /stats and fail_times (fail the first K requests of the
 * scenario with status S, then answer). Without a directive it answers at once with
 * 3 chunks. POST /v1/embeddings answers one small vector per input (directives in the
 * first input string). GET /stats returns what it saw per key: requests, the last request body,
 * the last Authorization header, and when a client closed a response early. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <microhttpd.h>

static const char *const pieces[] = {"Hello", " w\xC3\xB6rld", " \"quoted\"", " tab\t", " \xE4\xB8\xAD\xE6\x96\x87",
                                     " emoji \xF0\x9F\x8E\x89", "\\n", "\n"};
#define N_PIECES (sizeof pieces / sizeof pieces[0])

typedef struct scenario {
    char key[64];
    int requests;
    double closed_at;   /* wall seconds when a client closed early; 0: never */
    char *last_body;
    char *last_auth;
    char *last_headers; /* JSON object of the last request's headers */
    struct scenario *next;
} scenario;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static scenario *scenarios;
static long total_requests;

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Under mu. */
static scenario *find(const char *key)
{
    for (scenario *s = scenarios; s; s = s->next)
        if (strcmp(s->key, key) == 0)
            return s;
    scenario *s = calloc(1, sizeof *s);
    snprintf(s->key, sizeof s->key, "%s", key);
    s->next = scenarios;
    scenarios = s;
    return s;
}

typedef struct directive {
    char key[64];
    int chunks, delay_ms, first_delay_ms, status, fail_times, retry_after;
    int stall_after, drop_after, malformed_after, echo_key, error_after, pings, sse, norole;
    char error_type[64];
} directive;

static void parse_directive(const char *text, directive *d)
{
    memset(d, 0, sizeof *d);
    d->chunks = 3;
    d->stall_after = d->drop_after = d->malformed_after = d->echo_key = d->error_after = -1;
    const char *p = text ? strstr(text, "fake:") : NULL;
    if (!p)
        return;
    p += 5;
    while (*p && *p != '\n') {
        while (*p == ' ')
            p++;
        char name[32], value[64];
        if (sscanf(p, "%31[a-z_]=%63[^ \n]", name, value) == 2) {
            int v = atoi(value);
            if (!strcmp(name, "key")) snprintf(d->key, sizeof d->key, "%s", value);
            else if (!strcmp(name, "chunks")) d->chunks = v;
            else if (!strcmp(name, "delay_ms")) d->delay_ms = v;
            else if (!strcmp(name, "first_delay_ms")) d->first_delay_ms = v;
            else if (!strcmp(name, "status")) d->status = v;
            else if (!strcmp(name, "fail_times")) d->fail_times = v;
            else if (!strcmp(name, "retry_after")) d->retry_after = v;
            else if (!strcmp(name, "stall_after")) d->stall_after = v;
            else if (!strcmp(name, "drop_after")) d->drop_after = v;
            else if (!strcmp(name, "malformed_after")) d->malformed_after = v;
            else if (!strcmp(name, "echo_key")) d->echo_key = v;
            else if (!strcmp(name, "error_after")) d->error_after = v;
            else if (!strcmp(name, "pings")) d->pings = v;
            else if (!strcmp(name, "sse")) d->sse = v;
            else if (!strcmp(name, "norole")) d->norole = v;
            else if (!strcmp(name, "error_type")) snprintf(d->error_type, sizeof d->error_type, "%s", value);
        }
        while (*p && *p != ' ' && *p != '\n')
            p++;
    }
}

/* Sleeps ms, watching the client socket; returns -1 as soon as the client hangs up. */
static int wait_or_hangup(int fd, int ms)
{
    double end = wall_now() + ms / 1000.0;
    for (;;) {
        double left = end - wall_now();
        if (left <= 0)
            return 0;
        struct pollfd p = {fd, POLLRDHUP, 0};
        int t = (int)(left * 1000) + 1;
        if (poll(&p, 1, t > 10 ? 10 : t) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            return -1;
    }
}

/* The error body for a request: "fake failure S", or with echo_key, filler then the
 * bearer key the request carried (as a careless upstream might echo it). */
static char *error_body(const directive *d, const char *auth, int status)
{
    char msg[1024];
    if (d->echo_key >= 0 && d->echo_key < 512) {
        const char *key = auth && strncmp(auth, "Bearer ", 7) == 0 ? auth + 7 : "";
        int n = d->echo_key;
        memset(msg, 'x', (size_t)n);
        snprintf(msg + n, sizeof msg - (size_t)n, "%s is not a valid key", key);
    } else {
        snprintf(msg, sizeof msg, "fake failure %d", status);
    }
    cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", d->error_type[0] ? d->error_type : "fake_error");
    char *t = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return t;
}

typedef struct stream {
    directive d;
    char *error;     /* the error event's JSON, for error_after */
    bool chat;
    bool usage;
    int fd;
    int next;        /* next chunk index; chunks+1: usage/done */
    int pings;       /* comments sent so far */
    bool finished;
    char model[128];
    char buf[1024];
    size_t len, off;
} stream;

static void record_close(const char *key)
{
    pthread_mutex_lock(&mu);
    find(key)->closed_at = wall_now();
    pthread_mutex_unlock(&mu);
}

static void fill(stream *s)
{
    s->off = 0;
    s->len = 0;
    const directive *d = &s->d;
    if (s->next < d->chunks) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "id", "fake-1");
        cJSON_AddStringToObject(j, "object", s->chat ? "chat.completion.chunk" : "text_completion");
        cJSON_AddNumberToObject(j, "created", 1700000000);
        cJSON_AddStringToObject(j, "model", s->model);
        cJSON *choices = cJSON_AddArrayToObject(j, "choices");
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddNumberToObject(ch, "index", 0);
        const char *piece = pieces[s->next % N_PIECES];
        if (s->chat) {
            cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
            if (s->next == 0 && !d->norole)
                cJSON_AddStringToObject(delta, "role", "assistant");
            cJSON_AddStringToObject(delta, "content", piece);
        } else {
            cJSON_AddStringToObject(ch, "text", piece);
        }
        if (s->next == d->chunks - 1)
            cJSON_AddStringToObject(ch, "finish_reason", "stop");
        else
            cJSON_AddNullToObject(ch, "finish_reason");
        char *t = cJSON_PrintUnformatted(j);
        s->len = (size_t)snprintf(s->buf, sizeof s->buf, "data: %s\n\n", t);
        free(t);
        cJSON_Delete(j);
    } else if (s->next == d->chunks && s->usage) {
        s->len = (size_t)snprintf(s->buf, sizeof s->buf,
                                  "data: {\"id\":\"fake-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                                  "\"model\":\"%s\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,"
                                  "\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n",
                                  s->model, d->chunks, d->chunks + 5);
    } else {
        s->len = (size_t)snprintf(s->buf, sizeof s->buf, "data: [DONE]\n\n");
        s->finished = true;
    }
    s->next++;
}

static void free_stream(void *cls)
{
    stream *s = cls;
    free(s->error);
    free(s);
}

static ssize_t read_stream(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    stream *s = cls;
    if (s->off == s->len) {
        if (s->finished)
            return MHD_CONTENT_READER_END_OF_STREAM;
        int i = s->next;
        const directive *d = &s->d;
        if (s->pings < d->pings) {
            if (wait_or_hangup(s->fd, 100) < 0) {
                record_close(d->key);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            s->len = (size_t)snprintf(s->buf, sizeof s->buf, ": ping\n\n");
            s->off = 0;
            s->pings++;
            size_t n = s->len < max ? s->len : max;
            memcpy(out, s->buf, n);
            s->off = n;
            return (ssize_t)n;
        }
        if (i == d->drop_after)
            return MHD_CONTENT_READER_END_WITH_ERROR; /* cut the connection mid-stream */
        if (i == d->stall_after) {
            if (wait_or_hangup(s->fd, 60000) < 0)
                record_close(d->key);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (i == d->error_after) {
            s->len = (size_t)snprintf(s->buf, sizeof s->buf, "data: %s\n\n", s->error);
            s->off = 0;
            s->finished = true;
        } else if (i == d->malformed_after) {
            s->len = (size_t)snprintf(s->buf, sizeof s->buf, "data: {\"choices\": [oops\n\n");
            s->off = 0;
            s->next = d->chunks + 2; /* then end */
            s->finished = true;
        } else {
            if (i > 0 && d->delay_ms && wait_or_hangup(s->fd, d->delay_ms) < 0) {
                record_close(d->key);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            fill(s);
        }
    }
    size_t n = s->len - s->off < max ? s->len - s->off : max;
    memcpy(out, s->buf + s->off, n);
    s->off += n;
    return (ssize_t)n;
}

typedef struct req_ctx {
    char *body;
    size_t len;
} req_ctx;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body, int retry_after)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (retry_after > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", retry_after);
        MHD_add_response_header(r, "Retry-After", v);
    }
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result stats(struct MHD_Connection *c)
{
    cJSON *j = cJSON_CreateObject();
    pthread_mutex_lock(&mu);
    cJSON_AddNumberToObject(j, "requests", (double)total_requests);
    cJSON *keys = cJSON_AddObjectToObject(j, "keys");
    for (scenario *s = scenarios; s; s = s->next) {
        cJSON *k = cJSON_AddObjectToObject(keys, s->key);
        cJSON_AddNumberToObject(k, "requests", s->requests);
        cJSON_AddNumberToObject(k, "closed_at", s->closed_at);
        if (s->last_body)
            cJSON_AddStringToObject(k, "last_body", s->last_body);
        if (s->last_auth)
            cJSON_AddStringToObject(k, "last_auth", s->last_auth);
        if (s->last_headers)
            cJSON_AddRawToObject(k, "last_headers", s->last_headers);
    }
    pthread_mutex_unlock(&mu);
    char *t = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    enum MHD_Result r = reply(c, 200, t, 0);
    free(t);
    return r;
}

static enum MHD_Result add_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    cJSON_AddStringToObject(cls, key, value ? value : "");
    return MHD_YES;
}

static const char *last_text(const cJSON *body, bool chat)
{
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(body, "input");
    if (input) { /* embeddings: the string, or the first of an array */
        const cJSON *first = cJSON_IsArray(input) ? input->child : input;
        return cJSON_IsString(first) ? first->valuestring : NULL;
    }
    if (!chat) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
        return cJSON_IsString(p) ? p->valuestring : NULL;
    }
    const char *text = NULL;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    for (const cJSON *m = cJSON_IsArray(msgs) ? msgs->child : NULL; m; m = m->next) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (cJSON_IsString(ct))
            text = ct->valuestring;
    }
    return text;
}

static enum MHD_Result answer(struct MHD_Connection *c, const char *url, req_ctx *rc)
{
    bool chat = strcmp(url, "/v1/chat/completions") == 0;
    cJSON *body = cJSON_ParseWithLength(rc->body ? rc->body : "", rc->len);
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return reply(c, 400, "{\"error\":{\"message\":\"fake: body is not a JSON object\",\"type\":\"invalid_request_error\"}}", 0);
    }
    directive d;
    parse_directive(last_text(body, chat), &d);
    int seen;
    pthread_mutex_lock(&mu);
    total_requests++;
    scenario *sc = find(d.key);
    seen = ++sc->requests;
    free(sc->last_body);
    sc->last_body = strndup(rc->body ? rc->body : "", rc->len);
    free(sc->last_auth);
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    sc->last_auth = auth ? strdup(auth) : NULL;
    cJSON *headers = cJSON_CreateObject();
    MHD_get_connection_values(c, MHD_HEADER_KIND, add_header, headers);
    free(sc->last_headers);
    sc->last_headers = cJSON_PrintUnformatted(headers);
    cJSON_Delete(headers);
    pthread_mutex_unlock(&mu);

    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd = ci ? ci->connect_fd : -1;
    if (d.first_delay_ms && wait_or_hangup(fd, d.first_delay_ms) < 0) {
        record_close(d.key);
        cJSON_Delete(body);
        return MHD_NO;
    }
    if (d.status && (d.fail_times == 0 || seen <= d.fail_times)) {
        char *err = error_body(&d, auth, d.status);
        cJSON_Delete(body);
        enum MHD_Result r = reply(c, (unsigned)d.status, err, d.retry_after);
        free(err);
        return r;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (strcmp(url, "/v1/embeddings") == 0) {
        /* One 4-dimensional vector per input, its values from the input's index. */
        const cJSON *input = cJSON_GetObjectItemCaseSensitive(body, "input");
        int n = cJSON_IsArray(input) ? cJSON_GetArraySize(input) : 1;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "object", "list");
        cJSON *data = cJSON_AddArrayToObject(j, "data");
        for (int i = 0; i < n; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "object", "embedding");
            cJSON_AddNumberToObject(e, "index", i);
            cJSON *v = cJSON_AddArrayToObject(e, "embedding");
            for (int k = 0; k < 4; k++)
                cJSON_AddItemToArray(v, cJSON_CreateNumber(0.25 * (i + 1) * (k + 1)));
            cJSON_AddItemToArray(data, e);
        }
        cJSON_AddStringToObject(j, "model", cJSON_IsString(model) ? model->valuestring : "");
        cJSON *u = cJSON_AddObjectToObject(j, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", 3 * n);
        cJSON_AddNumberToObject(u, "total_tokens", 3 * n);
        char *t = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        cJSON_Delete(body);
        enum MHD_Result r = reply(c, 200, t, 0);
        free(t);
        return r;
    }
    bool streaming = d.sse || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "stream"));
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    bool usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
    if (!streaming) {
        char content[8192] = "";
        size_t n = 0;
        for (int i = 0; i < d.chunks && n < sizeof content - 64; i++)
            n += (size_t)snprintf(content + n, sizeof content - n, "%s", pieces[i % N_PIECES]);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "id", "fake-1");
        cJSON_AddStringToObject(j, "object", chat ? "chat.completion" : "text_completion");
        cJSON_AddNumberToObject(j, "created", 1700000000);
        cJSON_AddStringToObject(j, "model", cJSON_IsString(model) ? model->valuestring : "");
        cJSON *choices = cJSON_AddArrayToObject(j, "choices");
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddNumberToObject(ch, "index", 0);
        if (chat) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", content);
        } else {
            cJSON_AddStringToObject(ch, "text", content);
        }
        cJSON_AddNullToObject(ch, "logprobs");
        cJSON_AddStringToObject(ch, "finish_reason", "stop");
        cJSON *u = cJSON_AddObjectToObject(j, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", 5);
        cJSON_AddNumberToObject(u, "completion_tokens", d.chunks);
        cJSON_AddNumberToObject(u, "total_tokens", d.chunks + 5);
        char *t = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        cJSON_Delete(body);
        enum MHD_Result r = reply(c, 200, t, 0);
        free(t);
        return r;
    }
    stream *s = calloc(1, sizeof *s);
    s->d = d;
    s->error = error_body(&d, auth, 500);
    s->chat = chat;
    s->usage = usage;
    s->fd = fd;
    snprintf(s->model, sizeof s->model, "%s", cJSON_IsString(model) ? model->valuestring : "");
    cJSON_Delete(body);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, read_stream, s, free_stream);
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)version;
    req_ctx *rc = *con_cls;
    if (!rc) {
        *con_cls = calloc(1, sizeof(req_ctx));
        return MHD_YES;
    }
    if (*upload_size) {
        rc->body = realloc(rc->body, rc->len + *upload_size + 1);
        memcpy(rc->body + rc->len, upload, *upload_size);
        rc->len += *upload_size;
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") == 0 && strcmp(url, "/stats") == 0)
        return stats(c);
    if (strcmp(method, "POST") == 0 &&
        (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/v1/completions") == 0 ||
         strcmp(url, "/v1/embeddings") == 0))
        return answer(c, url, rc);
    return reply(c, 404, "{\"error\":{\"message\":\"fake: no such path\",\"type\":\"not_found\"}}", 0);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    req_ctx *rc = *con_cls;
    if (rc) {
        free(rc->body);
        free(rc);
    }
    *con_cls = NULL;
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* tests talk to loopback only */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, (uint16_t)port, NULL, NULL,
        on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        NULL, MHD_OPTION_CONNECTION_LIMIT, 2000, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "fake-upstream: cannot listen on port %d\n", port);
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("fake-upstream listening on http://127.0.0.1:%u\n", di ? di->port : (unsigned)port);
    fflush(stdout);
    /* Runs until stdin closes or the process is killed; tests kill it. */
    char buf[64];
    while (read(0, buf, sizeof buf) > 0)
        ;
    pause();
    MHD_stop_daemon(d);
    return 0;
}
