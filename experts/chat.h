/* Chat templates. A GGUF model names its prompt format as a Jinja template
 * (tokenizer.chat_template); coegate recognizes the common families from it and
 * renders them natively, with no Jinja interpreter. An unknown template is an error
 * that names the model; an expert's config can name the family instead. */
#ifndef COE_CHAT_H
#define COE_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

#include "common/buf.h"

typedef enum coe_chat_family {
    COE_CHAT_CHATML, COE_CHAT_LLAMA2, COE_CHAT_LLAMA3, COE_CHAT_MISTRAL, COE_CHAT_GEMMA,
    COE_CHAT_PHI3, COE_CHAT_DEEPSEEK, COE_CHAT_ZEPHYR,
} coe_chat_family;

/* The family of a Jinja template; false when it is none of them. */
bool coe_chat_detect(const char *tmpl, size_t n, coe_chat_family *out);
/* By name: chatml, llama2, llama3, mistral, gemma, phi3, deepseek, zephyr. */
bool coe_chat_family_from_name(const char *name, coe_chat_family *out);
const char *coe_chat_family_name(coe_chat_family f);
/* The names, comma-separated, for messages. */
extern const char coe_chat_family_names[];

/* Renders OpenAI chat messages (an array of {role, content}; content a string or an
 * array of text parts) and the assistant's turn opening. No BOS: the tokenizer adds
 * it. On a message it cannot render, returns false with the reason in err. */
bool coe_chat_render(coe_chat_family f, const cJSON *messages, coe_buf *out, char *err, size_t errlen);

#endif
