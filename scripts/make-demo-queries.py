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

# Word problems in GSM8K's manner, Python requests, and speeches from plays: what the
# demo's real experts (models/) were trained on. Made up here, not taken from any corpus.
names = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar", "Priya", "Jack", "Sofia", "Ben"]
items = ["apples", "pencils", "stickers", "cupcakes", "marbles", "books", "tickets", "shirts", "cookies", "stamps"]
word_t = ["{n} has {a} {i}. {n} gives {b} of them to a friend. How many {i} are left?",
          "{n} bought {a} {i} for ${b} each. How much did {n} spend?",
          "{n} sold {a} {i} on Monday and twice as many on Tuesday. How many {i} did {n} sell in all?",
          "A box holds {a} {i}. How many boxes does {n} need for {c} {i}?",
          "{n} earns ${a} an hour and works {b} hours a week. How much does {n} earn in {c} weeks?",
          "There are {a} {i} in a jar and {n} takes a third of them. How many remain?",
          "{n} reads {a} pages a day. How many days will a {c}-page book take?",
          "A train travels {a} miles in {b} hours. What is its average speed?",
          "{n} has {a} {i} and buys {b} more, then loses half. How many does {n} have now?"]
py_tasks = ["checks whether a number is prime", "reverses a string", "counts the words in a file",
            "returns the largest value in a list", "parses a date string", "merges two dictionaries",
            "removes duplicates from a list", "computes a factorial", "flattens a nested list",
            "reads a CSV file into a list of dicts", "converts Celsius to Fahrenheit", "finds the median of a list"]
py_t = ["Write a Python function that {t}.", "Write a Python class that {t}.", "Implement a function that {t}.",
        "def {f}(x): please write the body so that it {t}.", "Show me a Python function that {t}."]
characters = ["Romeo", "Juliet", "King Henry", "Lady Macbeth", "Hamlet", "a herald", "the Duke", "a soldier",
              "Queen Margaret", "a nurse"]
play_t = ["Write a speech for {c}.", "Write a scene in which {c} speaks of love and war.",
          "Compose a soliloquy for {c} in blank verse.", "Write lines for {c} in the style of Shakespeare.",
          "Give me a short monologue for {c} about honour."]

rows = []
for i in range(60):
    n, it = random.choice(names), random.choice(items)
    a, b = random.randint(6, 90), random.randint(2, 12)
    rows.append({"text": random.choice(word_t).format(n=n, i=it, a=a, b=b, c=a * random.randint(2, 9)),
                 "category": "math"})
    t = random.choice(py_tasks)
    rows.append({"text": random.choice(py_t).format(t=t, f=t.split()[0]), "category": "code"})
    rows.append({"text": random.choice(play_t).format(c=random.choice(characters)), "category": "writing"})
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
