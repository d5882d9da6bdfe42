"""POST /v1/responses, the Responses API as a bridge over chat completions: text in
and out, streamed (its events) or not, usage, for every kind of expert (echo, a remote
one on the fake upstream, a local model), and the requests it refuses by field."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import COEGATE, Gateway, Stream, Upstream, post, remote  # noqa: E402


def responses(port, body):
    return post(port, body, path="/v1/responses")


def stream_events(port, body):
    s = Stream(port, body, path="/v1/responses")
    try:
        assert s.status == 200, s.resp.read()
        assert s.headers["content-type"].startswith("text/event-stream")
        return [json.loads(data) for _, data in s.all()]
    finally:
        s.close()


def output_text(resp):
    return "".join(part["text"] for item in resp["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


class Responses(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="coegate-responses-")
        model = os.path.join(cls.dir.name, "qwen.gguf")
        r = subprocess.run([COEGATE, "forge", "-o", model, "--arch", "qwen2moe", "--type", "q8_0", "--seed", "7"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        cls.up = Upstream()
        try:
            cls.gw = Gateway({"experts": {"e": {"kind": "echo"}, "up": remote(cls.up, retries=0),
                                          "local": {"kind": "local", "path": model, "threads": 2}},
                              "routes": {"auto": {"default": "e"}}})
        except Exception:
            cls.up.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()
        cls.up.close()
        cls.dir.cleanup()

    def check_response(self, resp, model):
        """A finished response; a local model of random weights may well use up its
        max_output_tokens, which makes the response incomplete."""
        self.assertTrue(resp["id"].startswith("resp_"))
        self.assertEqual(resp["object"], "response")
        self.assertEqual(resp["model"], model)
        status = resp["status"]
        if model != "local":
            self.assertEqual(status, "completed")
        self.assertEqual(resp["incomplete_details"],
                         None if status == "completed" else {"reason": "max_output_tokens"})
        self.assertIsNone(resp["error"])
        item = resp["output"][0]
        self.assertEqual((item["type"], item["role"], item["status"]), ("message", "assistant", status))
        self.assertEqual(item["content"][0]["annotations"], [])
        u = resp["usage"]
        self.assertGreater(u["input_tokens"], 0)
        self.assertGreater(u["output_tokens"], 0)
        self.assertEqual(u["total_tokens"], u["input_tokens"] + u["output_tokens"])

    def test_text_in_and_out_on_every_kind_of_expert(self):
        for model in ("e", "up", "local"):
            with self.subTest(model=model):
                r = responses(self.gw.port, {"model": model, "input": "hello there", "max_output_tokens": 8,
                                             "temperature": 0.5, "metadata": {"k": "v"}})
                self.assertEqual(r.status, 200, r.body)
                resp = r.json()
                self.check_response(resp, model)
                self.assertTrue(output_text(resp))
                self.assertEqual(resp["temperature"], 0.5)
                self.assertEqual(resp["max_output_tokens"], 8)
                self.assertEqual(resp["metadata"], {"k": "v"})
                self.assertEqual(r.headers["x-coegate-expert"], model)
        # The echo expert answers with the last user message: input and instructions
        # arrive as chat messages.
        r = responses(self.gw.port, {"model": "e", "instructions": "be brief", "input": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "an answer"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second question"}]}]})
        self.assertEqual(r.status, 200, r.body)
        self.assertIn("second question", output_text(r.json()))

    def test_what_the_remote_expert_receives(self):
        r = responses(self.gw.port, {"model": "up", "instructions": "sys", "input": "fake: key=resp-shape",
                                     "max_output_tokens": 9, "top_p": 0.5,
                                     "text": {"format": {"type": "json_object"}}})
        self.assertEqual(r.status, 200, r.body)
        sent = json.loads(self.up.key("resp-shape")["last_body"])
        self.assertEqual(sent["messages"], [{"role": "system", "content": "sys"},
                                            {"role": "user", "content": "fake: key=resp-shape"}])
        self.assertEqual(sent["max_tokens"], 9)
        self.assertEqual(sent["top_p"], 0.5)
        self.assertEqual(sent["response_format"], {"type": "json_object"})
        self.assertNotIn("input", sent)
        self.assertNotIn("max_output_tokens", sent)

    def test_streamed_events(self):
        for model in ("e", "up", "local"):
            with self.subTest(model=model):
                events = stream_events(self.gw.port, {"model": model, "input": "hello stream", "stream": True,
                                                      "max_output_tokens": 8})
                types = [e["type"] for e in events]
                self.assertEqual(types[:4], ["response.created", "response.in_progress", "response.output_item.added",
                                             "response.content_part.added"])
                self.assertEqual(types[-4:], ["response.output_text.done", "response.content_part.done",
                                              "response.output_item.done", "response." + events[-1]["response"]["status"]])
                self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
                deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
                self.assertTrue(deltas)
                self.assertEqual(events[-4]["text"], deltas)
                done = events[-1]["response"]
                self.check_response(done, model)
                self.assertEqual(output_text(done), deltas)
                self.assertEqual(events[0]["response"]["status"], "in_progress")

    def test_cut_by_max_output_tokens_is_incomplete(self):
        r = responses(self.gw.port, {"model": "e", "input": "one two three four five six", "max_output_tokens": 2})
        resp = r.json()
        self.assertEqual(resp["status"], "incomplete")
        self.assertEqual(resp["incomplete_details"], {"reason": "max_output_tokens"})
        events = stream_events(self.gw.port, {"model": "e", "input": "one two three four", "stream": True,
                                              "max_output_tokens": 2})
        self.assertEqual(events[-1]["type"], "response.incomplete")

    def test_json_object_on_a_local_expert(self):
        r = responses(self.gw.port, {"model": "local", "input": "give me JSON", "max_output_tokens": 40,
                                     "text": {"format": {"type": "json_object"}}})
        self.assertEqual(r.status, 200, r.body)
        resp = r.json()
        if resp["status"] == "completed":
            self.assertIsInstance(json.loads(output_text(resp)), dict)

    def test_json_schema_on_a_local_expert(self):
        schema = {"type": "object", "required": ["kind"], "additionalProperties": False,
                  "properties": {"kind": {"type": "string", "enum": ["cat", "dog"]}}}
        r = responses(self.gw.port, {"model": "local", "input": "a pet", "max_output_tokens": 60, "seed": 2,
                                     "text": {"format": {"type": "json_schema", "name": "pet", "schema": schema}}})
        self.assertEqual(r.status, 200, r.body)
        resp = r.json()
        if resp["status"] == "completed":
            self.assertIn(json.loads(output_text(resp))["kind"], ("cat", "dog"))
        else:
            self.assertTrue(output_text(resp).startswith("{"))

    def test_refusals_name_the_field(self):
        cases = [
            ({"model": "e"}, "input"),
            ({"model": "e", "input": 3}, "input"),
            ({"model": "e", "input": []}, "input"),
            ({"model": "e", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
            ({"model": "e", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0]"),
            ({"model": "e", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
             "input[0].content[0]"),
            ({"model": "e", "input": "x", "tools": [{"type": "function", "name": "f"}]}, "tools"),
            ({"model": "e", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
            ({"model": "e", "input": "x", "background": True}, "background"),
            ({"model": "e", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
            ({"model": "e", "input": "x", "temperature": 9}, "temperature"),
            ({"model": "e", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
            ({"model": "e", "input": "x", "instructions": 5}, "instructions"),
        ]
        for body, param in cases:
            with self.subTest(body=body):
                r = responses(self.gw.port, body)
                self.assertEqual(r.status, 400, r.body)
                self.assertEqual(r.json()["error"]["param"], param)
        # Accepted and ignored: what coegate has no use for.
        r = responses(self.gw.port, {"model": "e", "input": "x", "store": False, "parallel_tool_calls": True,
                                     "truncation": "disabled", "tools": []})
        self.assertEqual(r.status, 200, r.body)

    def test_unknown_model_and_metrics(self):
        r = responses(self.gw.port, {"model": "nobody", "input": "x"})
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json()["error"]["param"], "model")


if __name__ == "__main__":
    unittest.main()
