#include "experts/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[] = {"chatml", "llama2", "llama3", "mistral", "gemma", "phi3", "deepseek", "zephyr"};
const char coe_chat_family_names[] = "chatml, llama2, llama3, mistral, gemma, phi3, deepseek, zephyr";

const char *coe_chat_family_name(coe_chat_family f)
{
    return (unsigned)f < sizeof names / sizeof names[0] ? names[f] : "?";
}

bool coe_chat_family_from_name(const char *name, coe_chat_family *out)
{
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (coe_chat_family)i;
            return true;
        }
    return false;
}

static bool has(const char *s, size_t n, const char *what)
{
    return memmem(s, n, what, strlen(what)) != NULL;
}

bool coe_chat_detect(const char *t, size_t n, coe_chat_family *out)
{
    /* Most specific marker first: several families share [INST] or <|user|>. */
    if (has(t, n, "<|im_start|>"))
        *out = COE_CHAT_CHATML;
    else if (has(t, n, "<|start_header_id|>"))
        *out = COE_CHAT_LLAMA3;
    else if (has(t, n, "<start_of_turn>"))
        *out = COE_CHAT_GEMMA;
    else if (has(t, n, "<|assistant|>") && has(t, n, "<|end|>"))
        *out = COE_CHAT_PHI3;
    else if (has(t, n, "<|assistant|>"))
        *out = COE_CHAT_ZEPHYR;
    else if (has(t, n, "### Instruction:"))
        *out = COE_CHAT_DEEPSEEK;
    else if (has(t, n, "[INST]") && has(t, n, "<<SYS>>"))
        *out = COE_CHAT_LLAMA2;
    else if (has(t, n, "[INST]"))
        *out = COE_CHAT_MISTRAL;
    else
        return false;
    return true;
}

/* The text of a message's content: a string, or the text parts of an array. */
static bool content_text(const cJSON *m, coe_buf *out, char *err, size_t errlen, int i)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!c || cJSON_IsNull(c))
        return true;
    if (cJSON_IsString(c)) {
        coe_buf_puts(out, c->valuestring);
        return true;
    }
    if (cJSON_IsArray(c)) {
        for (const cJSON *p = c->child; p; p = p->next) {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
            if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text)) {
                snprintf(err, errlen, "messages[%d].content: only text parts can be given to a local model", i);
                return false;
            }
            coe_buf_puts(out, text->valuestring);
        }
        return true;
    }
    snprintf(err, errlen, "messages[%d].content must be a string or an array of text parts", i);
    return false;
}

typedef struct msg {
    const char *role;
    coe_buf text;
} msg;

bool coe_chat_render(coe_chat_family f, const cJSON *messages, coe_buf *out, char *err, size_t errlen)
{
    int n = cJSON_GetArraySize(messages);
    msg *ms = calloc((size_t)(n > 0 ? n : 1), sizeof *ms);
    if (!ms) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    bool ok = true;
    int i = 0;
    for (const cJSON *m = messages ? messages->child : NULL; m && ok; m = m->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        ms[i].role = cJSON_IsString(role) ? role->valuestring : "user";
        if (strcmp(ms[i].role, "developer") == 0)
            ms[i].role = "system";
        if (strcmp(ms[i].role, "tool") == 0 || strcmp(ms[i].role, "function") == 0)
            ms[i].role = "user"; /* tool results read as user turns in formats without a tool role */
        ok = content_text(m, &ms[i].text, err, errlen, i);
    }
#define TXT(k) (ms[k].text.data ? ms[k].text.data : "")
#define IS(k, r) (strcmp(ms[k].role, r) == 0)
    /* Formats without a system turn fold it into the first user message. */
    const char *system = NULL;
    int first = 0;
    bool fold = f == COE_CHAT_LLAMA2 || f == COE_CHAT_MISTRAL || f == COE_CHAT_GEMMA;
    if (fold && n > 0 && IS(0, "system")) {
        system = TXT(0);
        first = 1;
    }
    for (int k = first; k < n && ok; k++) {
        const char *t = TXT(k), *r = ms[k].role;
        bool user = !IS(k, "assistant") && !IS(k, "system");
        switch (f) {
        case COE_CHAT_CHATML:
            coe_buf_printf(out, "<|im_start|>%s\n%s<|im_end|>\n", r, t);
            break;
        case COE_CHAT_LLAMA3:
            coe_buf_printf(out, "<|start_header_id|>%s<|end_header_id|>\n\n%s<|eot_id|>", r, t);
            break;
        case COE_CHAT_PHI3:
            coe_buf_printf(out, "<|%s|>\n%s<|end|>\n", user ? "user" : r, t);
            break;
        case COE_CHAT_ZEPHYR:
            coe_buf_printf(out, "<|%s|>\n%s</s>\n", user ? "user" : r, t);
            break;
        case COE_CHAT_GEMMA:
            if (user && system && k == first)
                coe_buf_printf(out, "<start_of_turn>user\n%s\n\n%s<end_of_turn>\n", system, t);
            else
                coe_buf_printf(out, "<start_of_turn>%s\n%s<end_of_turn>\n", user ? "user" : "model", t);
            break;
        case COE_CHAT_DEEPSEEK:
            if (IS(k, "system"))
                coe_buf_printf(out, "%s\n", t);
            else if (user)
                coe_buf_printf(out, "### Instruction:\n%s\n", t);
            else
                coe_buf_printf(out, "### Response:\n%s\n<|EOT|>\n", t);
            break;
        case COE_CHAT_LLAMA2:
        case COE_CHAT_MISTRAL:
            if (user) {
                /* Turns after the first open with their own BOS (the first comes from the tokenizer). */
                if (k > first)
                    coe_buf_puts(out, "<s>");
                coe_buf_puts(out, "[INST] ");
                if (system && k == first)
                    coe_buf_printf(out, f == COE_CHAT_LLAMA2 ? "<<SYS>>\n%s\n<</SYS>>\n\n" : "%s\n\n", system);
                coe_buf_printf(out, "%s [/INST]", t);
            } else if (IS(k, "assistant")) {
                coe_buf_printf(out, f == COE_CHAT_LLAMA2 ? " %s </s>" : "%s</s>", t);
            } else {
                snprintf(err, errlen, "messages[%d]: the %s format takes a system message only first", k,
                         coe_chat_family_name(f));
                ok = false;
            }
            break;
        }
    }
    if (ok) {
        static const char *const opening[] = {
            [COE_CHAT_CHATML] = "<|im_start|>assistant\n",
            [COE_CHAT_LLAMA2] = "",
            [COE_CHAT_LLAMA3] = "<|start_header_id|>assistant<|end_header_id|>\n\n",
            [COE_CHAT_MISTRAL] = "",
            [COE_CHAT_GEMMA] = "<start_of_turn>model\n",
            [COE_CHAT_PHI3] = "<|assistant|>\n",
            [COE_CHAT_DEEPSEEK] = "### Response:\n",
            [COE_CHAT_ZEPHYR] = "<|assistant|>\n",
        };
        coe_buf_puts(out, opening[f]);
    }
#undef TXT
#undef IS
    for (int k = 0; k < n; k++)
        coe_buf_free(&ms[k].text);
    free(ms);
    return ok;
}
