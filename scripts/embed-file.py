#!/usr/bin/env python3
"""Used by the build: writes a C file holding INPUT's bytes as `const char NAME[]` (NUL
after them) and `const size_t NAME_len`, so that static files (the web console) are in
the binary. usage: embed-file.py INPUT OUTPUT NAME"""
import sys

src, out, name = sys.argv[1:4]
data = open(src, "rb").read()
with open(out, "w") as f:
    f.write("/* Generated from %s by scripts/embed-file.py: do not edit. */\n#include <stddef.h>\n\n" % src.split("/")[-1])
    f.write("const char %s[] = {\n" % name)
    for i in range(0, len(data), 16):
        f.write("    " + " ".join("%d," % b for b in data[i:i + 16]) + "\n")
    f.write("    0};\nconst size_t %s_len = %d;\n" % (name, len(data)))
