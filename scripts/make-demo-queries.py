#!/usr/bin/env python3
"""Writes configs/demo-queries.jsonl: a small labeled query set (code, math, writing)
for the demo router. Made from templates with a fixed seed, so it is reproducible."""
import json
import random

random.seed(7)
langs = ["Python", "C", "Rust", "Go", "JavaScript", "TypeScript", "Java", "C++", "SQL", "Bash"]
tasks = ["parse a CSV file", "reverse a linked list", "read a file line by line", "sort a list of records by date",
         "open a TCP socket", "retry an HTTP request with backoff", "merge two sorted arrays", "debounce a function",
         "deduplicate rows in a table", "compute a SHA-256 hash", "walk a directory tree", "parse JSON into a struct",
         "write a unit test for a parser", "implement a binary search", "handle a segfault in a loop"]
code_t = ["How do I {t} in {l}?", "Write a {l} function to {t}.", "My {l} code fails when I try to {t}; what is wrong?",
          "What is the idiomatic way to {t} in {l}?", "Can you review this {l} snippet that tries to {t}?",
          "Why does my {l} program crash when I {t}?", "Show me {l} code to {t} without extra libraries."]
math_topics = ["the derivative of x^3 sin x", "the integral of 1/(1+x^2)", "the eigenvalues of a 2x2 matrix",
               "the probability of two sixes in three dice rolls", "the limit of (1+1/n)^n",
               "the sum of the first 100 odd numbers", "a proof that sqrt 2 is irrational",
               "the roots of x^2 - 5x + 6", "the determinant of a 3x3 matrix", "the variance of a binomial variable",
               "the area under y = x^2 from 0 to 3", "the number of ways to choose 4 of 10 items",
               "the gradient of f(x, y) = x^2 y", "the Taylor series of e^x", "the solution of 3x + 7 = 22"]
math_t = ["What is {m}?", "Compute {m}.", "Explain step by step how to find {m}.", "Can you check my working for {m}?",
          "I am stuck on {m}; how should I start?", "Give me a hint for {m}.", "Solve: {m}."]
subjects = ["a lighthouse keeper", "autumn in a small town", "a robot learning to paint", "the first day of school",
            "a letter to my future self", "a dragon who is afraid of the dark", "the sea at night",
            "an apology to a neighbour", "a wedding toast for my sister", "a product launch announcement",
            "a farewell speech for a colleague", "a haunted library", "a cover letter for a nursing job",
            "a bedtime story about stars", "a review of a jazz concert"]
write_t = ["Write a short poem about {s}.", "Draft {s} in a warm tone.", "Tell me a story about {s}.",
           "Help me write {s}; keep it under 200 words.", "Give me three opening lines for {s}.",
           "Rewrite this paragraph about {s} to sound more vivid.", "Compose a haiku about {s}."]

rows = []
for i in range(90):
    rows.append({"text": random.choice(code_t).format(t=random.choice(tasks), l=random.choice(langs)),
                 "category": "code"})
    rows.append({"text": random.choice(math_t).format(m=random.choice(math_topics)), "category": "math"})
    rows.append({"text": random.choice(write_t).format(s=random.choice(subjects)), "category": "writing"})
random.shuffle(rows)
with open("configs/demo-queries.jsonl", "w") as f:
    for i, r in enumerate(rows):
        f.write(json.dumps({"id": f"demo-{i}", **r}) + "\n")
print(f"wrote configs/demo-queries.jsonl ({len(rows)} rows)")
