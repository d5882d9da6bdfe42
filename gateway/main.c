/* coegate: the command line. One binary, several verbs. */
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "coe_build.h"
#include "common/cli.h"
#include "common/err.h"
#include "common/log.h"
#include "common/gguf.h"
#include "backends/local.h"
#include "experts/model_info.h"
#include "experts/fusion_cli.h"
#include "experts/nll.h"
#include "gateway/config.h"
#include "gateway/server.h"
#include "experts/cuda.h"
#include "experts/forge.h"
#include "router/classifier.h"
#include "router/cli.h"
#include "router/route.h"

static const char usage_main[] =
    "usage: coegate VERB [options]\n"
    "\n"
    "A composition-of-experts gateway that speaks the OpenAI API.\n"
    "\n"
    "verbs:\n"
    "  serve          run the gateway (built-in demo configuration without --config)\n"
    "  config check   validate a configuration file\n"
    "  model info     describe a GGUF model file\n"
    "  model nll      measure models' per-token log-likelihood (perplexity) on texts\n"
    "  forge          write a random-weight GGUF model (tests, demos, benchmarks)\n"
    "  route          show which expert a route picks for a text, and why\n"
    "  router train   learn the category router from labeled queries\n"
    "  router eval    measure a router on labeled queries\n"
    "  fusion train   learn a fusion group's selector (which expert writes each token)\n"
    "  fusion eval    measure token-level fusion against its experts and routing\n"
    "  version        print the version and build features\n"
    "\n"
    "Run 'coegate VERB --help' for a verb's options.\n";

static const char usage_serve[] =
    "usage: coegate serve [--config FILE] [--host ADDR] [--port N] [--log-level LEVEL]\n"
    "\n"
    "Runs the gateway. Without --config it serves the built-in demo configuration\n"
    "(one echo expert behind the route 'auto').\n"
    "\n"
    "  --config FILE      the JSON configuration (see README: configuration reference)\n"
    "  --host ADDR        listen address, overriding server.host\n"
    "  --port N           listen port, overriding server.port; 0 picks a free port\n"
    "  --log-level LEVEL  debug, info (default), warn or error\n"
    "\n"
    "Prints 'listening on http://HOST:PORT' once ready. SIGHUP reloads the\n"
    "configuration file (a bad file is reported and the running one kept); SIGTERM\n"
    "or SIGINT stops accepting, lets requests in flight finish (server.shutdown_grace_ms)\n"
    "and exits 0.\n";

static const char usage_config[] =
    "usage: coegate config check FILE\n"
    "\n"
    "Validates FILE and reports every problem as 'FILE: json.path: what is wrong'.\n"
    "Environment variables the file names (API keys) only draw warnings here.\n"
    "Exits 0 when the file is valid, 1 otherwise.\n";

static const char usage_model[] =
    "usage: coegate model info FILE...\n"
    "       coegate model tokenize [--prompt] FILE < TEXT\n"
    "       coegate model nll MODEL... --data FILE.jsonl... (see coegate model nll --help)\n"
    "\n"
    "Describes GGUF model files: format, architecture and shape, parameter counts\n"
    "(total, and active per token for Mixture-of-Experts models), tensor types,\n"
    "vocabulary and chat template. A file that is not a valid GGUF is refused with\n"
    "the byte offset, key or tensor concerned. Exits 1 if any file is refused.\n"
    "tokenize prints the token ids of standard input (all of it, one text) in the\n"
    "file's vocabulary: as plain text, or with --prompt as a prompt (BOS where the\n"
    "vocabulary asks for it, special tokens' texts read as those tokens).\n";

static const char usage_route[] =
    "usage: coegate route --config FILE [--route NAME] TEXT\n"
    "\n"
    "Classifies TEXT with the route's router (NAME, default auto) and prints the top\n"
    "categories with their probabilities, the expert chosen and the rule used:\n"
    "policy (best quality minus cost_weight x cost for the category), threshold (the\n"
    "top probability is under the route's threshold: its fallback), unconfigured (the\n"
    "category lists no experts: the default) or default (the route has no router).\n";

static int cmd_config(int argc, char **argv)
{
    if (coe_cli_wants_help(argc, argv)) {
        fputs(usage_config, stdout);
        return 0;
    }
    if (argc != 2 || strcmp(argv[0], "check") != 0) {
        fputs(usage_config, stderr);
        return 2;
    }
    coe_buf diag = COE_BUF_INIT;
    coe_config *cfg = NULL;
    int rc = coe_config_load(argv[1], COE_CONFIG_CHECK, &cfg, &diag);
    if (diag.len)
        fputs(diag.data, stderr);
    coe_buf_free(&diag);
    if (rc) {
        fprintf(stderr, "%s: invalid\n", argv[1]);
        return 1;
    }
    char summary[96];
    coe_config_summary(cfg, summary, sizeof summary);
    printf("%s: ok (%s)\n", argv[1], summary);
    coe_config_unref(&cfg);
    return 0;
}

static int parse_level(const char *s, coe_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (coe_log_level)i;
            return 0;
        }
    return COE_EINVAL;
}

static int cmd_model(int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "nll") == 0)
        return coe_nll_main(argc - 1, argv + 1);
    if (coe_cli_wants_help(argc, argv)) {
        fputs(usage_model, stdout);
        return 0;
    }
    bool prompt = argc == 3 && strcmp(argv[1], "--prompt") == 0;
    if ((argc == 2 || prompt) && strcmp(argv[0], "tokenize") == 0) {
        coe_buf text = COE_BUF_INIT, out = COE_BUF_INIT, diag = COE_BUF_INIT;
        coe_gguf *g = NULL;
        int rc = coe_buf_read_file(&text, "/dev/stdin", 64u << 20, &diag);
        if (!rc && !(rc = coe_gguf_open(&g, argv[argc - 1], &diag)))
            rc = coe_model_tokenize(g, text.data ? text.data : "", text.len, prompt, &out, &diag);
        fputs(rc ? (diag.data ? diag.data : "coegate model tokenize: failed\n") : out.data, rc ? stderr : stdout);
        coe_gguf_close(&g);
        coe_buf_free(&text), coe_buf_free(&out), coe_buf_free(&diag);
        return rc ? 1 : 0;
    }
    if (argc < 2 || strcmp(argv[0], "info") != 0) {
        fputs(usage_model, stderr);
        return 2;
    }
    int status = 0;
    for (int i = 1; i < argc; i++) {
        coe_buf out = COE_BUF_INIT;
        coe_gguf *g = NULL;
        if (coe_gguf_open(&g, argv[i], &out)) {
            fputs(out.data, stderr);
            status = 1;
        } else {
            coe_model_info(g, &out);
            fputs(out.data, stdout);
        }
        coe_gguf_close(&g);
        coe_buf_free(&out);
    }
    return status;
}

static int cmd_route(int argc, char **argv)
{
    if (coe_cli_wants_help(argc, argv)) {
        fputs(usage_route, stdout);
        return 0;
    }
    const char *config = NULL, *route = "auto", *text = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (!strcmp(argv[i], "--route") && i + 1 < argc)
            route = argv[++i];
        else if (argv[i][0] != '-' && !text)
            text = argv[i];
        else {
            fprintf(stderr, "coegate route: unexpected argument '%s'\n\n%s", argv[i], usage_route);
            return 2;
        }
    }
    if (!config || !text) {
        fputs(usage_route, stderr);
        return 2;
    }
    coe_buf diag = COE_BUF_INIT;
    coe_config *cfg = NULL;
    int rc = coe_config_load(config, COE_CONFIG_CHECK, &cfg, &diag);
    if (diag.len)
        fputs(diag.data, stderr);
    coe_buf_free(&diag);
    if (rc)
        return 1;
    int r = coe_config_find_route(cfg, route);
    coe_route_decision d;
    if (r < 0) {
        fprintf(stderr, "coegate route: %s has no route named '%s'\n", config, route);
        rc = 1;
    } else if ((rc = coe_route_text(cfg, r, text, &d)) != 0) {
        fprintf(stderr, "coegate route: %s\n", coe_strerror(rc));
        rc = 1;
    } else {
        const coe_route_cfg *rt = &cfg->routes[r];
        printf("route       %s%s%s%s\n", route, rt->router_path ? " (router " : " (no router)",
               rt->router_path ? rt->router_path : "", rt->router_path ? ")" : "");
        if (d.category >= 0) {
            printf("categories ");
            for (int k = 0; k < d.n_top; k++)
                printf(" %s %.4f%s", rt->router->categories[d.top[k]], d.top_p[k], k + 1 < d.n_top ? "," : "");
            printf("\n");
        }
        const coe_expert_cfg *e = &cfg->experts[d.expert];
        printf("expert      %s\nrule        %s: ", e->name, d.rule);
        if (!strcmp(d.rule, "policy"))
            printf("best quality - %g x cost among the experts of '%s' (score %.4f)\n", rt->cost_weight,
                   d.category_name, d.score);
        else if (!strcmp(d.rule, "threshold"))
            printf("top probability %.4f is under the threshold %g: the fallback answers\n", d.confidence,
                   rt->threshold);
        else if (!strcmp(d.rule, "unconfigured"))
            printf("category '%s' lists no experts: the default answers\n", d.category_name);
        else
            printf("the route has no router: its default answers\n");
    }
    coe_config_unref(&cfg);
    return rc;
}

typedef struct serve_opts {
    const char *config;
    const char *host;
    int port; /* -1: from the config */
} serve_opts;

/* Loads the configuration (file or built-in) and applies the command-line overrides. */
static int load_config(const serve_opts *o, coe_config **out)
{
    coe_buf diag = COE_BUF_INIT;
    int rc = o->config ? coe_config_load(o->config, COE_CONFIG_SERVE, out, &diag)
                       : coe_config_parse(coe_config_demo_json, strlen(coe_config_demo_json), "<built-in demo>",
                                          COE_CONFIG_SERVE, out, &diag);
    if (diag.len) {
        /* One log line per problem, so that each is timestamped and greppable. */
        for (char *line = strtok(diag.data, "\n"); line; line = strtok(NULL, "\n"))
            coe_log(strncmp(line, "warning: ", 9) == 0 ? COE_LOG_WARN : COE_LOG_ERROR, "%s", line);
    }
    coe_buf_free(&diag);
    if (rc)
        return rc;
    if (o->host) {
        free((*out)->server.host);
        (*out)->server.host = strdup(o->host);
    }
    if (o->port >= 0)
        (*out)->server.port = o->port;
    return 0;
}

/* Signals arrive through a pipe: a handler works whatever thread the kernel picks
 * (libraries such as OpenBLAS start threads before main, which no mask set here
 * could cover), and the main thread reads them in order. */
static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t n = write(signal_pipe[1], &b, 1);
    (void)n;
    errno = saved;
}

static int install_signals(void)
{
    if (pipe2(signal_pipe, O_CLOEXEC) != 0)
        return -1;
    fcntl(signal_pipe[1], F_SETFL, O_NONBLOCK);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* The next signal, waiting at most timeout_ms (-1: no limit); 0 when none came. */
static int next_signal(int timeout_ms)
{
    struct pollfd p = {signal_pipe[0], POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    unsigned char b;
    return read(signal_pipe[0], &b, 1) == 1 ? b : 0;
}

/* Waits for in-flight requests to end, at most grace_ms; a second signal cuts it short. */
static void drain(coe_server *srv, long grace_ms)
{
    long long deadline = coe_now_ms() + grace_ms;
    while (coe_server_inflight(srv) > 0 && coe_now_ms() < deadline) {
        int sig = next_signal(20);
        if (sig == SIGTERM || sig == SIGINT) {
            coe_warn("second signal: stopping now");
            return;
        }
    }
    int left = coe_server_inflight(srv);
    if (left > 0)
        coe_warn("shutdown grace of %ld ms is over; ending %d requests still in flight", grace_ms, left);
}

static int cmd_serve(int argc, char **argv)
{
    if (coe_cli_wants_help(argc, argv)) {
        fputs(usage_serve, stdout);
        return 0;
    }
    serve_opts o = {NULL, NULL, -1};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "coegate serve: %s needs a value, or is not an option\n%s", a, usage_serve);
            return 2;
        }
        if (strcmp(a, "--config") == 0) {
            o.config = v;
        } else if (strcmp(a, "--host") == 0) {
            o.host = v;
        } else if (strcmp(a, "--port") == 0) {
            char *end;
            long p = strtol(v, &end, 10);
            if (*end || end == v || p < 0 || p > 65535) {
                fprintf(stderr, "coegate serve: --port: expected 0-65535, got '%s'\n", v);
                return 2;
            }
            o.port = (int)p;
        } else if (strcmp(a, "--log-level") == 0) {
            coe_log_level lvl;
            if (parse_level(v, &lvl)) {
                fprintf(stderr, "coegate serve: --log-level: expected debug, info, warn or error, got '%s'\n", v);
                return 2;
            }
            coe_log_set_level(lvl);
        } else {
            fprintf(stderr, "coegate serve: unknown option '%s'\n%s", a, usage_serve);
            return 2;
        }
        i++;
    }

    if (install_signals() != 0) {
        coe_error("cannot set up signal handling: %s", strerror(errno));
        return 1;
    }
    /* One BLAS thread: the workers are the parallelism (router batches are small). */
    openblas_set_num_threads(1);

    coe_config *cfg = NULL;
    if (load_config(&o, &cfg)) {
        coe_error("%s: not started: the configuration is invalid", o.config ? o.config : "<built-in demo>");
        return 1;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        coe_error("libcurl could not be initialised");
        coe_config_unref(&cfg);
        return 1;
    }
    coe_server *srv = NULL;
    if (coe_server_open(&srv, cfg)) {
        coe_config_unref(&cfg);
        curl_global_cleanup();
        return 1;
    }
    const char *host = cfg->server.host;
    bool v6 = strchr(host, ':') != NULL;
    char summary[96];
    coe_config_summary(cfg, summary, sizeof summary);
    printf("coegate %s listening on http://%s%s%s:%d (%s, config %s)\n", COE_VERSION, v6 ? "[" : "", host,
           v6 ? "]" : "", coe_server_port(srv), summary, cfg->path);
    fflush(stdout);

    for (;;) {
        int sig = next_signal(-1);
        if (!sig)
            continue;
        if (sig == SIGHUP) {
            if (!o.config) {
                coe_warn("SIGHUP: nothing to reload, the built-in demo configuration is in use");
                continue;
            }
            coe_config *next = NULL;
            serve_opts keep = o;
            if (load_config(&keep, &next)) {
                coe_error("%s: reload refused: the file is invalid; still serving the previous configuration",
                          o.config);
                continue;
            }
            coe_server_set_config(srv, next);
            coe_config_summary(next, summary, sizeof summary);
            coe_info("%s: reloaded (%s)", o.config, summary);
            coe_config_unref(&cfg);
            cfg = next;
            continue;
        }
        coe_info("%s: stopping: no new connections; waiting for %d requests in flight", sig == SIGINT ? "SIGINT" : "SIGTERM",
                 coe_server_inflight(srv));
        coe_server_quiesce(srv);
        drain(srv, cfg->server.shutdown_grace_ms);
        break;
    }
    coe_server_close(&srv);
    coe_config_unref(&cfg);
    coe_local_wait_closed();
    curl_global_cleanup();
    coe_info("stopped");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "serve") == 0)
        return cmd_serve(argc - 2, argv + 2);
    if (strcmp(verb, "config") == 0)
        return cmd_config(argc - 2, argv + 2);
    if (strcmp(verb, "model") == 0)
        return cmd_model(argc - 2, argv + 2);
    if (strcmp(verb, "router") == 0)
        return coe_router_cli(argc - 2, argv + 2);
    if (strcmp(verb, "fusion") == 0)
        return coe_fusion_main(argc - 2, argv + 2);
    if (strcmp(verb, "forge") == 0)
        return coe_forge_main(argc - 2, argv + 2);
    if (strcmp(verb, "route") == 0)
        return cmd_route(argc - 2, argv + 2);
    if (strcmp(verb, "version") == 0 || strcmp(verb, "--version") == 0) {
        int gpus = coe_cuda_device_count();
        printf("coegate %s (cuda: %s, %d GPU%s found)\n", COE_VERSION, COE_HAVE_CUDA ? "yes" : "no", gpus,
               gpus == 1 ? "" : "s");
        return 0;
    }
    fprintf(stderr, "coegate: unknown verb '%s'\n\n%s", verb, usage_main);
    return 2;
}
