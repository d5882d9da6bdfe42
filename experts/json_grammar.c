/* JSON's grammar as a pushdown automaton over bytes: see experts/json_grammar.h. */
#include "experts/json_grammar.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { /* M_VALUE to M_OBJ_NEXT, and M_DONE: between tokens (see feed_byte) */
    M_START,     /* before the top-level object */
    M_VALUE,     /* a value */
    M_ARR_FIRST, /* after '[': a value or ']' */
    M_ARR_NEXT,  /* after an array element: ',' or ']' */
    M_OBJ_FIRST, /* after '{': a key or '}' */
    M_OBJ_KEY,   /* after ',' in an object: a key */
    M_COLON,     /* after a key */
    M_OBJ_NEXT,  /* after a member: ',' or '}' */
    M_STRING,    /* inside a string (sub: UTF-8 continuation bytes still due) */
    M_ESCAPE,    /* after a backslash */
    M_HEX,       /* in \uXXXX (sub: hex digits still due) */
    M_LITERAL,   /* in true, false or null (sub: index into literals, then position) */
    N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP, /* a number */
    M_DONE,      /* the object is complete: whitespace only */
    M_CSTRING,   /* inside a constrained string: a key of a schema's object, an enum value */
};

/* ---- schemas ---- */

enum { T_OBJECT = 1, T_ARRAY = 2, T_STRING = 4, T_NUMBER = 8, T_INTEGER = 16, T_BOOL = 32, T_NULL = 64, T_ANY = 127 };

#define MAX_NAMES 64 /* properties of one object, values of one enum (bits of a uint64_t) */

typedef struct jname {
    char *text;
    size_t len;
    int node;        /* a property's schema */
} jname;

typedef struct jnode {
    uint8_t types;
    bool open;       /* an object without "properties": any members */
    int names;       /* first of its properties or enum values in schema->names */
    int n_names;
    bool is_enum;
    uint64_t required;
    int items;       /* an array's element schema (0: any) */
    int min_items, max_items; /* max -1: none */
    bool has_lo, has_hi, lo_excl, hi_excl; /* a number's bounds */
    double lo, hi;
} jnode;

struct coe_json_schema {
    jnode *nodes;    /* node 0: any value */
    int n_nodes, cap_nodes;
    jname *names;
    int n_names, cap_names;
    int root;
};

typedef struct compiler {
    coe_json_schema *s;
    char *why, *path;
    size_t why_len, path_len;
    bool failed;
} compiler;

static int refuse(compiler *c, const char *path, const char *fmt, const char *what)
{
    if (!c->failed) {
        snprintf(c->why, c->why_len, fmt, what);
        snprintf(c->path, c->path_len, "%s", path);
        c->failed = true;
    }
    return -1;
}

static int new_node(compiler *c)
{
    coe_json_schema *s = c->s;
    if (s->n_nodes == s->cap_nodes) {
        int cap = s->cap_nodes ? s->cap_nodes * 2 : 8;
        jnode *p = realloc(s->nodes, (size_t)cap * sizeof *p);
        if (!p || cap > 65535)
            return refuse(c, "", "%s", cap > 65535 ? "the schema has too many parts" : "");
        s->nodes = p;
        s->cap_nodes = cap;
    }
    s->nodes[s->n_nodes] = (jnode){.types = T_ANY, .open = true, .max_items = -1};
    return s->n_nodes++;
}

/* Names and enum values are matched byte for byte: they must need no escape. */
static int add_name(compiler *c, const char *path, const char *text, int node)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        if (*p < 0x20 || *p == '"' || *p == '\\')
            return refuse(c, path, "'%s' holds a quote, a backslash or a control character", text);
    coe_json_schema *s = c->s;
    if (s->n_names == s->cap_names) {
        int cap = s->cap_names ? s->cap_names * 2 : 8;
        jname *p = realloc(s->names, (size_t)cap * sizeof *p);
        if (!p)
            return refuse(c, "", "%s", "");
        s->names = p;
        s->cap_names = cap;
    }
    char *t = strdup(text);
    if (!t)
        return refuse(c, "", "%s", "");
    s->names[s->n_names++] = (jname){t, strlen(t), node};
    return 0;
}

static int compile_node(compiler *c, const cJSON *j, const char *path, int depth);

static int type_bit(const char *t)
{
    static const char *const names[] = {"object", "array", "string", "number", "integer", "boolean", "null"};
    for (int i = 0; i < 7; i++)
        if (strcmp(t, names[i]) == 0)
            return 1 << i;
    return 0;
}

static int compile_object(compiler *c, int n, const cJSON *j, const char *path, int depth)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(j, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(j, "required");
    char p[512];
    if (!props) {
        if (req && cJSON_GetArraySize(req) > 0)
            return refuse(c, path, "%s", "'required' names properties that 'properties' does not list");
        return 0; /* any members */
    }
    if (!cJSON_IsObject(props))
        return refuse(c, path, "%s", "'properties' must be an object");
    int count = cJSON_GetArraySize(props);
    if (count > MAX_NAMES)
        return refuse(c, path, "%s", "an object may list at most 64 properties");
    /* Their names first (contiguous), then their schemas (which add names of their own). */
    int first = c->s->n_names;
    for (const cJSON *m = props->child; m; m = m->next) {
        snprintf(p, sizeof p, "%s.properties.%s", path, m->string);
        if (add_name(c, p, m->string, 0))
            return -1;
    }
    c->s->nodes[n].open = false;
    c->s->nodes[n].names = first;
    c->s->nodes[n].n_names = count;
    int k = 0;
    for (const cJSON *m = props->child; m; m = m->next, k++) {
        snprintf(p, sizeof p, "%s.properties.%s", path, m->string);
        int child = compile_node(c, m, p, depth + 1);
        if (child < 0)
            return -1;
        c->s->names[first + k].node = child;
    }
    if (req) {
        if (!cJSON_IsArray(req))
            return refuse(c, path, "%s", "'required' must be an array of property names");
        for (const cJSON *r = req->child; r; r = r->next) {
            int found = -1;
            for (int i = 0; cJSON_IsString(r) && i < count; i++)
                if (strcmp(c->s->names[first + i].text, r->valuestring) == 0)
                    found = i;
            if (found < 0)
                return refuse(c, path, "'required' names '%s', which 'properties' does not list",
                              cJSON_IsString(r) ? r->valuestring : "?");
            c->s->nodes[n].required |= 1ull << found;
        }
    }
    return 0;
}

static int compile_node(compiler *c, const cJSON *j, const char *path, int depth)
{
    static const char *const known[] = {"type", "properties", "required", "additionalProperties", "items", "minItems",
                                        "maxItems", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
                                        "exclusiveMaximum", "title", "description", "default", "examples",
                                        "$schema", "$id", NULL};
    if (!cJSON_IsObject(j))
        return refuse(c, path, "%s", "a schema must be an object");
    if (depth >= COE_JSON_MAX_DEPTH)
        return refuse(c, path, "%s", "the schema nests too deep");
    for (const cJSON *m = j->child; m; m = m->next) {
        bool ok = false;
        for (const char *const *k = known; *k && !ok; k++)
            ok = strcmp(*k, m->string) == 0;
        if (!ok)
            return refuse(c, path,
                          "'%s' is outside the JSON Schema subset that local experts enforce (type, properties, "
                          "required, additionalProperties, items, minItems, maxItems, enum, const)",
                          m->string);
    }
    int n = new_node(c);
    if (n < 0)
        return -1;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(j, "enum"), *cn = cJSON_GetObjectItemCaseSensitive(j, "const");
    unsigned types = 0;
    if (cJSON_IsString(type)) {
        types = (unsigned)type_bit(type->valuestring);
    } else if (cJSON_IsArray(type)) {
        for (const cJSON *t = type->child; t; t = t->next)
            types |= cJSON_IsString(t) ? (unsigned)type_bit(t->valuestring) : 0u;
        if (!types)
            return refuse(c, path, "%s", "'type' lists no known type");
    } else if (type) {
        return refuse(c, path, "%s", "'type' must be a string or an array of strings");
    }
    if (type && !types)
        return refuse(c, path, "'type' '%s' is not a JSON Schema type", type->valuestring);
    if (!types) /* no "type": what the other keywords imply, else anything */
        types = cJSON_GetObjectItemCaseSensitive(j, "properties") ? T_OBJECT
                : cJSON_GetObjectItemCaseSensitive(j, "items")    ? T_ARRAY
                : en || cn                                        ? T_STRING
                                                                  : T_ANY;
    if (types & T_NUMBER)
        types |= T_INTEGER; /* an integer is a number */
    c->s->nodes[n].types = (uint8_t)types;
    if (en || cn) {
        if (types & ~(unsigned)T_STRING)
            return refuse(c, path, "%s", "'enum' and 'const' are enforced for strings only");
        if (en && (!cJSON_IsArray(en) || !en->child || cJSON_GetArraySize(en) > MAX_NAMES))
            return refuse(c, path, "%s", "'enum' must be an array of 1 to 64 strings");
        int first = c->s->n_names, count = 0;
        for (const cJSON *v = en ? en->child : cn; v; v = en ? v->next : NULL, count++) {
            if (!cJSON_IsString(v))
                return refuse(c, path, "%s", "'enum' and 'const' are enforced for strings only");
            if (add_name(c, path, v->valuestring, 0))
                return -1;
        }
        c->s->nodes[n].is_enum = true;
        c->s->nodes[n].names = first;
        c->s->nodes[n].n_names = count;
    }
    if ((types & T_OBJECT) && compile_object(c, n, j, path, depth))
        return -1;
    static const char *const bound_names[] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};
    for (int b = 0; b < 4; b++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, bound_names[b]);
        if (!v)
            continue;
        if (!cJSON_IsNumber(v))
            return refuse(c, path, "'%s' must be a number", bound_names[b]);
        jnode *nd = &c->s->nodes[n];
        bool excl = b & 1, upper = b >= 2;
        double x = v->valuedouble;
        /* Of two bounds on one side, the tighter counts. */
        if (upper && (!nd->has_hi || x < nd->hi || (x == nd->hi && excl)))
            nd->has_hi = true, nd->hi = x, nd->hi_excl = excl;
        if (!upper && (!nd->has_lo || x > nd->lo || (x == nd->lo && excl)))
            nd->has_lo = true, nd->lo = x, nd->lo_excl = excl;
    }
    {
        const jnode *nd = &c->s->nodes[n];
        if (nd->has_lo && nd->has_hi && (nd->lo > nd->hi || (nd->lo == nd->hi && (nd->lo_excl || nd->hi_excl))))
            return refuse(c, path, "%s", "the bounds leave no number");
    }
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(j, "additionalProperties");
    if (ap && !cJSON_IsBool(ap))
        return refuse(c, path, "%s", "'additionalProperties' is enforced as false or true only (no schema)");
    if (types & T_ARRAY) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(j, "items");
        if (items) {
            char p[512];
            snprintf(p, sizeof p, "%s.items", path);
            int child = compile_node(c, items, p, depth + 1);
            if (child < 0)
                return -1;
            c->s->nodes[n].items = child;
        }
        const char *const bounds[] = {"minItems", "maxItems"};
        for (int b = 0; b < 2; b++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, bounds[b]);
            if (!v)
                continue;
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 65535 ||
                v->valuedouble != (double)(int)v->valuedouble)
                return refuse(c, path, "'%s' must be an integer from 0 to 65535", bounds[b]);
            if (b == 0)
                c->s->nodes[n].min_items = (int)v->valuedouble;
            else
                c->s->nodes[n].max_items = (int)v->valuedouble;
        }
        if (c->s->nodes[n].max_items >= 0 && c->s->nodes[n].max_items < c->s->nodes[n].min_items)
            return refuse(c, path, "%s", "'maxItems' is below 'minItems'");
    }
    return n;
}

void coe_json_schema_free(coe_json_schema **sp)
{
    coe_json_schema *s = *sp;
    *sp = NULL;
    if (!s)
        return;
    for (int i = 0; i < s->n_names; i++)
        free(s->names[i].text);
    free(s->names);
    free(s->nodes);
    free(s);
}

coe_json_schema *coe_json_schema_compile(const cJSON *schema, char *why, size_t why_len, char *path,
                                         size_t path_len)
{
    *why = *path = '\0';
    coe_json_schema *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    compiler c = {s, why, path, why_len, path_len, false};
    if (new_node(&c) == 0 && (s->root = compile_node(&c, schema, "", 0)) > 0 &&
        s->nodes[s->root].types != T_OBJECT)
        refuse(&c, "", "%s", "the schema's root must be of type object");
    if (c.failed || s->root <= 0) {
        coe_json_schema_free(&s);
        return NULL;
    }
    return s;
}

/* ---- what a schema allows where the text is ---- */

static const jnode *node_at(const coe_json_state *s, int depth)
{
    return &s->schema->nodes[s->frames[depth].node];
}

/* The schema of the value that starts now: the root, a property's, an element's. */
static int value_node(const coe_json_state *s)
{
    if (s->depth == 0)
        return s->schema->root;
    const coe_json_frame *f = &s->frames[s->depth - 1];
    const jnode *n = &s->schema->nodes[f->node];
    if (s->stack[s->depth - 1] == '[')
        return n->items;
    return n->open ? 0 : s->schema->names[n->names + f->prop].node;
}

/* The properties of the innermost object not yet written. */
static uint64_t unseen(const coe_json_state *s)
{
    const jnode *n = node_at(s, s->depth - 1);
    uint64_t all = n->n_names == 64 ? ~0ull : (1ull << n->n_names) - 1;
    return all & ~s->frames[s->depth - 1].seen;
}

/* Whether the innermost container may close, or take one more member or element. */
static bool may_close(const coe_json_state *s)
{
    if (!s->schema)
        return true;
    const coe_json_frame *f = &s->frames[s->depth - 1];
    const jnode *n = node_at(s, s->depth - 1);
    if (s->stack[s->depth - 1] == '{')
        return n->open || (n->required & ~f->seen) == 0;
    return f->count >= n->min_items;
}

static bool may_continue(const coe_json_state *s)
{
    if (!s->schema)
        return true;
    const jnode *n = node_at(s, s->depth - 1);
    if (s->stack[s->depth - 1] == '{')
        return n->open || unseen(s) != 0;
    return n->max_items < 0 || s->frames[s->depth - 1].count < n->max_items;
}

/* A constrained string begins: a key of a closed object, or an enum value. */
static void begin_cstring(coe_json_state *s, uint64_t cand)
{
    s->mode = M_CSTRING;
    s->pos = 0;
    s->cand = cand;
}

/* One byte of a constrained string: the candidates it still matches. */
static bool feed_cstring(coe_json_state *s, unsigned char c)
{
    int first, count;
    if (s->key) {
        const jnode *n = node_at(s, s->depth - 1);
        first = n->names, count = n->n_names;
    } else {
        const jnode *n = &s->schema->nodes[value_node(s)];
        first = n->names, count = n->n_names;
    }
    uint64_t left = 0;
    for (int i = 0; i < count; i++) {
        if (!(s->cand >> i & 1))
            continue;
        const jname *nm = &s->schema->names[first + i];
        if (c == '"' ? nm->len == s->pos : nm->len > s->pos && (unsigned char)nm->text[s->pos] == c)
            left |= 1ull << i;
    }
    if (!left)
        return false;
    if (c != '"') {
        s->cand = left;
        s->pos++;
        return true;
    }
    if (s->key) { /* names differ: one is left */
        coe_json_frame *f = &s->frames[s->depth - 1];
        f->prop = (uint8_t)__builtin_ctzll(left);
        f->seen |= left;
        s->mode = M_COLON;
    }
    return true; /* an enum value ended: the caller moves past it */
}

static const char *const literals[3] = {"true", "false", "null"};

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* A value has ended: what may follow depends on the container it is in. */
static void after_value(coe_json_state *s)
{
    s->mode = s->depth == 0 ? M_DONE : s->stack[s->depth - 1] == '{' ? M_OBJ_NEXT : M_ARR_NEXT;
}

static bool open_container(coe_json_state *s, unsigned char c, int node)
{
    if (s->depth == COE_JSON_MAX_DEPTH)
        return false;
    if (s->schema)
        s->frames[s->depth] = (coe_json_frame){.node = (uint16_t)node};
    s->stack[s->depth++] = c;
    s->mode = c == '{' ? M_OBJ_FIRST : M_ARR_FIRST;
    return true;
}

static bool close_container(coe_json_state *s, unsigned char c)
{
    if (s->depth == 0 || s->stack[s->depth - 1] != (c == '}' ? '{' : '[') || !may_close(s))
        return false;
    s->depth--;
    after_value(s);
    return true;
}

/* ---- bounded numbers ---- */

#define MAX_BOUNDED_DIGITS 18

static const jnode *number_node(const coe_json_state *s)
{
    if (!s->schema)
        return NULL;
    const jnode *n = &s->schema->nodes[value_node(s)];
    return n->has_lo || n->has_hi ? n : NULL;
}

static long double pow10_ld(int k)
{
    long double p = 1;
    while (k-- > 0)
        p *= 10;
    return p;
}

/* Whether some value in the set of magnitudes from m0 to m1 (m1 itself only when
 * closed), with the number's sign, lies within n's bounds. */
static bool meets(const coe_json_state *s, const jnode *n, long double m0, long double m1, bool closed)
{
    /* Signed: [x0, x1], each end attained or not. */
    long double x0 = s->neg ? -m1 : m0, x1 = s->neg ? -m0 : m1;
    bool x0_in = s->neg ? closed : true, x1_in = s->neg ? true : closed;
    if (n->has_lo && (x1 < n->lo || (x1 == n->lo && (!x1_in || n->lo_excl))))
        return false;
    if (n->has_hi && (x0 > n->hi || (x0 == n->hi && (!x0_in || n->hi_excl))))
        return false;
    return true;
}

/* Whether the number read so far can still end within n's bounds. */
static bool number_viable(const coe_json_state *s, const jnode *n)
{
    if (s->digits == 0) /* "-" alone: any magnitude */
        return meets(s, n, 0, INFINITY, false);
    long double a = (long double)s->mant;
    if (s->frac) { /* more fraction digits: from a / 10^f up to (a + 1) / 10^f */
        long double scale = pow10_ld(s->frac_digits);
        return meets(s, n, a / scale, (a + 1) / scale, false);
    }
    bool more_int = !(s->digits == 1 && s->mant == 0); /* no digit after a leading zero */
    if (meets(s, n, a, s->int_only ? a : a + 1, s->int_only))
        return true;
    for (int m = 1; more_int && s->digits + m <= MAX_BOUNDED_DIGITS; m++) {
        long double p = pow10_ld(m);
        if (meets(s, n, a * p, s->int_only ? (a + 1) * p - 1 : (a + 1) * p, s->int_only))
            return true;
    }
    return false;
}

/* Whether the number, ending now, is within n's bounds. */
static bool number_within(const coe_json_state *s, const jnode *n)
{
    long double v = (long double)s->mant / pow10_ld(s->frac ? s->frac_digits : 0);
    return meets(s, n, v, v, true);
}

/* A digit of a bounded number. */
static bool bounded_digit(coe_json_state *s, const jnode *n, unsigned char c)
{
    if (s->digits == MAX_BOUNDED_DIGITS)
        return false;
    s->mant = s->mant * 10 + (uint64_t)(c - '0');
    s->digits++;
    if (s->frac)
        s->frac_digits++;
    return number_viable(s, n);
}

/* The first byte of a value, of the types its schema allows. */
static bool start_value(coe_json_state *s, unsigned char c)
{
    int node = s->schema ? value_node(s) : 0;
    unsigned types = s->schema ? s->schema->nodes[node].types : T_ANY;
    if (s->schema && s->depth > 0 && s->stack[s->depth - 1] == '[') {
        coe_json_frame *f = &s->frames[s->depth - 1];
        int max = node_at(s, s->depth - 1)->max_items;
        if (max >= 0 && f->count >= max)
            return false;
        f->count++;
    }
    if (c == '{' || c == '[')
        return (types & (c == '{' ? T_OBJECT : T_ARRAY)) && open_container(s, c, node);
    if (c == '"') {
        if (!(types & T_STRING))
            return false;
        s->key = false;
        if (s->schema && s->schema->nodes[node].is_enum) {
            int count = s->schema->nodes[node].n_names;
            begin_cstring(s, count == 64 ? ~0ull : (1ull << count) - 1);
        } else {
            s->mode = M_STRING, s->sub = 0;
        }
        return true;
    }
    if (c == '-' || is_digit(c)) {
        if (!(types & (T_NUMBER | T_INTEGER)))
            return false;
        s->int_only = !(types & T_NUMBER);
        s->mode = c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT;
        s->neg = c == '-', s->frac = false, s->digits = 0, s->frac_digits = 0, s->mant = 0;
        const jnode *bn = number_node(s);
        return !bn || (c == '-' ? number_viable(s, bn) : bounded_digit(s, bn, c));
    }
    for (int i = 0; i < 3; i++)
        if (c == (unsigned char)literals[i][0]) {
            if (!(types & (i < 2 ? T_BOOL : T_NULL)))
                return false;
            s->mode = M_LITERAL, s->sub = (uint8_t)(i << 4 | 1);
            return true;
        }
    return false;
}

/* Whether a number may end in this state. */
static bool number_complete(uint8_t mode)
{
    return mode == N_ZERO || mode == N_INT || mode == N_FRAC || mode == N_EXP;
}

static bool feed_byte(coe_json_state *s, unsigned char c)
{
    /* Between the tokens of the text (not before the object, not inside a string, a
     * literal or a number, which whitespace ends below), whitespace changes nothing. */
    if (is_ws(c) && ((s->mode >= M_VALUE && s->mode <= M_OBJ_NEXT) || s->mode == M_DONE))
        return true;
    switch (s->mode) {
    case M_START: /* the answer starts with the object itself, not with padding */
        return c == '{' && open_container(s, c, s->schema ? s->schema->root : 0);
    case M_VALUE:
        return start_value(s, c);
    case M_ARR_FIRST:
        return c == ']' ? close_container(s, c) : start_value(s, c);
    case M_ARR_NEXT:
        if (c == ',' && may_continue(s)) {
            s->mode = M_VALUE;
            return true;
        }
        return c == ']' && close_container(s, c);
    case M_OBJ_FIRST:
    case M_OBJ_KEY:
        if (c == '"') {
            s->key = true;
            if (s->schema && !node_at(s, s->depth - 1)->open) {
                uint64_t cand = unseen(s);
                if (!cand)
                    return false;
                begin_cstring(s, cand);
            } else {
                s->mode = M_STRING, s->sub = 0;
            }
            return true;
        }
        return s->mode == M_OBJ_FIRST && c == '}' && close_container(s, c);
    case M_CSTRING:
        if (!feed_cstring(s, c))
            return false;
        if (c == '"' && !s->key)
            after_value(s);
        return true;
    case M_COLON:
        if (c != ':')
            return false;
        s->mode = M_VALUE;
        return true;
    case M_OBJ_NEXT:
        if (c == ',' && may_continue(s)) {
            s->mode = M_OBJ_KEY;
            return true;
        }
        return c == '}' && close_container(s, c);
    case M_STRING:
        if (s->sub > 0) { /* inside a UTF-8 character */
            if ((c & 0xC0) != 0x80)
                return false;
            s->sub--;
            return true;
        }
        if (c == '"') {
            if (s->key)
                s->mode = M_COLON;
            else
                after_value(s);
            return true;
        }
        if (c == '\\') {
            s->mode = M_ESCAPE;
            return true;
        }
        if (c < 0x20 || c == 0x7F || (c >= 0x80 && c < 0xC2) || c > 0xF4)
            return false; /* control characters, stray continuation bytes, overlong leads */
        s->sub = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
        return true;
    case M_ESCAPE:
        if (c == 'u') {
            s->mode = M_HEX, s->sub = 4;
            return true;
        }
        if (!strchr("\"\\/bfnrt", c) || !c)
            return false;
        s->mode = M_STRING, s->sub = 0;
        return true;
    case M_HEX:
        if (!(is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
        if (--s->sub == 0)
            s->mode = M_STRING;
        return true;
    case M_LITERAL: {
        const char *lit = literals[s->sub >> 4];
        int at = s->sub & 15;
        if (c != (unsigned char)lit[at])
            return false;
        if (lit[at + 1] == '\0')
            after_value(s);
        else
            s->sub = (uint8_t)((s->sub & 0xF0) | (at + 1));
        return true;
    }
    case N_MINUS: {
        if (!is_digit(c))
            return false;
        s->mode = c == '0' ? N_ZERO : N_INT;
        const jnode *bn = number_node(s);
        return !bn || bounded_digit(s, bn, c);
    }
    case N_ZERO:
    case N_INT:
    case N_FRAC:
    case N_EXP: {
        const jnode *bn = number_node(s);
        if (is_digit(c) && s->mode != N_ZERO)
            return !bn || bounded_digit(s, bn, c);
        if (c == '.' && (s->mode == N_ZERO || s->mode == N_INT) && !s->int_only) {
            s->mode = N_DOT;
            s->frac = true;
            return !bn || number_viable(s, bn);
        }
        if ((c == 'e' || c == 'E') && s->mode != N_EXP && !s->int_only && !bn) {
            s->mode = N_E;
            return true;
        }
        if (bn && !number_within(s, bn))
            return false;
        after_value(s); /* the number ended: the byte belongs to what follows */
        return feed_byte(s, c);
    }
    case N_DOT: {
        if (!is_digit(c))
            return false;
        s->mode = N_FRAC;
        const jnode *bn = number_node(s);
        return !bn || bounded_digit(s, bn, c);
    }
    case N_E:
        if (c == '+' || c == '-') {
            s->mode = N_ESIGN;
            return true;
        }
        /* fall through */
    case N_ESIGN:
        if (!is_digit(c))
            return false;
        s->mode = N_EXP;
        return true;
    default: /* M_DONE: whitespace only, taken above */
        return false;
    }
}

void coe_json_init(coe_json_state *s)
{
    memset(s, 0, offsetof(coe_json_state, frames));
    s->mode = M_START;
}

void coe_json_init_schema(coe_json_state *s, const coe_json_schema *schema)
{
    coe_json_init(s);
    s->schema = schema;
}

void coe_json_copy(coe_json_state *dst, const coe_json_state *src)
{
    memcpy(dst, src, offsetof(coe_json_state, frames));
    if (src->schema)
        memcpy(dst->frames, src->frames, src->depth * sizeof src->frames[0]);
}

bool coe_json_feed(coe_json_state *s, const char *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (s->mode != M_STRING && s->mode != M_ESCAPE && s->mode != M_HEX && s->mode != M_CSTRING) {
            if (!is_ws(c))
                s->space = 0;
            else if (++s->space > COE_JSON_MAX_SPACE)
                return false;
        }
        if (!feed_byte(s, c))
            return false;
    }
    return true;
}

bool coe_json_done(const coe_json_state *s)
{
    return s->mode == M_DONE || (number_complete(s->mode) && s->depth == 0);
}
