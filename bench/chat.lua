-- wrk script: one non-streaming chat completion per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"auto","messages":[{"role":"system","content":"You are terse."},' ..
           '{"role":"user","content":"fake: key=bench chunks=16\\nSummarise the plot of Hamlet."}],' ..
           '"max_tokens":64,"temperature":0.2}'
