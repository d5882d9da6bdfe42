/* JSON's grammar as a pushdown automaton over bytes: see experts/json_grammar.h. */
#include "experts/json_grammar.h"

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
};

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

static bool open_container(coe_json_state *s, unsigned char c)
{
    if (s->depth == COE_JSON_MAX_DEPTH)
        return false;
    s->stack[s->depth++] = c;
    s->mode = c == '{' ? M_OBJ_FIRST : M_ARR_FIRST;
    return true;
}

static bool close_container(coe_json_state *s, unsigned char c)
{
    if (s->depth == 0 || s->stack[s->depth - 1] != (c == '}' ? '{' : '['))
        return false;
    s->depth--;
    after_value(s);
    return true;
}

/* The first byte of a value. */
static bool start_value(coe_json_state *s, unsigned char c)
{
    if (c == '{' || c == '[')
        return open_container(s, c);
    if (c == '"') {
        s->mode = M_STRING, s->sub = 0, s->key = false;
        return true;
    }
    if (c == '-') {
        s->mode = N_MINUS;
        return true;
    }
    if (is_digit(c)) {
        s->mode = c == '0' ? N_ZERO : N_INT;
        return true;
    }
    for (int i = 0; i < 3; i++)
        if (c == (unsigned char)literals[i][0]) {
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
        return c == '{' && open_container(s, c);
    case M_VALUE:
        return start_value(s, c);
    case M_ARR_FIRST:
        return c == ']' ? close_container(s, c) : start_value(s, c);
    case M_ARR_NEXT:
        if (c == ',') {
            s->mode = M_VALUE;
            return true;
        }
        return c == ']' && close_container(s, c);
    case M_OBJ_FIRST:
    case M_OBJ_KEY:
        if (c == '"') {
            s->mode = M_STRING, s->sub = 0, s->key = true;
            return true;
        }
        return s->mode == M_OBJ_FIRST && c == '}' && close_container(s, c);
    case M_COLON:
        if (c != ':')
            return false;
        s->mode = M_VALUE;
        return true;
    case M_OBJ_NEXT:
        if (c == ',') {
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
    case N_MINUS:
        if (!is_digit(c))
            return false;
        s->mode = c == '0' ? N_ZERO : N_INT;
        return true;
    case N_ZERO:
    case N_INT:
    case N_FRAC:
    case N_EXP:
        if (is_digit(c) && s->mode != N_ZERO)
            return true;
        if (c == '.' && (s->mode == N_ZERO || s->mode == N_INT)) {
            s->mode = N_DOT;
            return true;
        }
        if ((c == 'e' || c == 'E') && s->mode != N_EXP) {
            s->mode = N_E;
            return true;
        }
        after_value(s); /* the number ended: the byte belongs to what follows */
        return feed_byte(s, c);
    case N_DOT:
        if (!is_digit(c))
            return false;
        s->mode = N_FRAC;
        return true;
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
    memset(s, 0, sizeof *s);
    s->mode = M_START;
}

bool coe_json_feed(coe_json_state *s, const char *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (s->mode != M_STRING && s->mode != M_ESCAPE && s->mode != M_HEX) {
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
