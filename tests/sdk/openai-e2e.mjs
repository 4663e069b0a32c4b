// End-to-end checks with the official OpenAI SDK against a running copilot-api whose upstream is the
// test stub (tests/StubUpstream.java). Usage: BASE_URL=http://127.0.0.1:PORT/v1 node openai-e2e.mjs
// Prints one line per check and a closing "N passed, N failed" line; exits 1 on any failure.
import assert from "node:assert/strict";
import { runChecks } from "./run-checks.mjs";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "unused", maxRetries: 0 });

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather for a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

const checks = {
  async "models.list lists the catalog with OpenAI fields"() {
    const ids = [];
    for await (const m of client.models.list()) {
      assert.equal(m.object, "model");
      assert.equal(typeof m.owned_by, "string");
      ids.push(m.id);
    }
    assert.ok(ids.includes("gpt-4.1"), ids.join(","));
    assert.ok(ids.includes("claude-sonnet-4.5"), ids.join(","));
  },

  async "chat non-stream answers text"() {
    const r = await client.chat.completions.create({ model: "gpt-4.1", messages: [{ role: "user", content: "hi" }] });
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(r.choices[0].message.content, "Hello from gpt-4.1.");
    assert.equal(r.choices[0].finish_reason, "stop");
  },

  async "chat stream assembles with finalChatCompletion and reports usage"() {
    const stream = client.chat.completions.stream({
      model: "gpt-4.1", messages: [{ role: "user", content: "hi" }], stream_options: { include_usage: true },
    });
    let deltas = 0;
    stream.on("content", () => deltas++);
    const final = await stream.finalChatCompletion();
    assert.equal(final.choices[0].message.content, "Hello from gpt-4.1.");
    assert.equal(final.choices[0].finish_reason, "stop");
    assert.ok(deltas > 1, "text should arrive in several deltas, got " + deltas);
    assert.ok(final.usage && final.usage.total_tokens > 0, JSON.stringify(final.usage));
  },

  async "claude stream with split choices and tool index from 1 assembles into one tool call"() {
    const stream = client.chat.completions.stream({
      model: "claude-sonnet-4.5", messages: [{ role: "user", content: "weather in Paris?" }], tools: [weather],
    });
    const final = await stream.finalChatCompletion();
    assert.equal(final.choices.length, 1);
    const choice = final.choices[0];
    assert.equal(choice.finish_reason, "tool_calls");
    assert.equal(choice.message.tool_calls.length, 1);
    const call = choice.message.tool_calls[0];
    assert.equal(call.type, "function");
    assert.equal(call.function.name, "get_weather");
    assert.ok(call.id, "tool call id");
    assert.deepEqual(JSON.parse(call.function.arguments), { city: "x" });
  },

  async "claude non-stream split choices merge into one choice"() {
    const r = await client.chat.completions.create({
      model: "claude-sonnet-4.5", messages: [{ role: "user", content: "weather?" }], tools: [weather],
    });
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].finish_reason, "tool_calls");
    assert.equal(r.choices[0].message.tool_calls[0].function.name, "get_weather");
  },

  async "a tool loop continues after the tool result"() {
    const messages = [{ role: "user", content: "weather?" }];
    const first = await client.chat.completions.create({ model: "gpt-4.1", messages, tools: [weather] });
    const call = first.choices[0].message.tool_calls[0];
    messages.push(first.choices[0].message, { role: "tool", tool_call_id: call.id, content: "sunny, 21C" });
    const second = await client.chat.completions.create({ model: "gpt-4.1", messages, tools: [weather] });
    assert.match(second.choices[0].message.content, /sunny, 21C/);
  },

  async "embeddings decode from base64 (the SDK default) to the upstream floats"() {
    const viaBase64 = await client.embeddings.create({ model: "text-embedding-3-small", input: ["hello", "world"] });
    const viaFloat = await client.embeddings.create({
      model: "text-embedding-3-small", input: ["hello", "world"], encoding_format: "float",
    });
    assert.equal(viaBase64.data.length, 2);
    for (let i = 0; i < 2; i++) {
      const a = viaBase64.data[i].embedding, b = viaFloat.data[i].embedding;
      assert.ok(Array.isArray(a) && a.length > 0);
      assert.equal(a.length, b.length);
      a.forEach((v, j) => assert.ok(Math.abs(v - b[j]) < 1e-6, `dim ${j}: ${v} vs ${b[j]}`));
    }
  },

  async "an unknown model is a NotFoundError naming close matches"() {
    await assert.rejects(
      client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "hi" }] }),
      (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && /not available through Copilot\. Close matches: /.test(e.message),
    );
  },

  async "a missing messages field is a 400 from copilot-api"() {
    await assert.rejects(
      client.chat.completions.create({ model: "gpt-4.1" }),
      (e) => e instanceof OpenAI.BadRequestError && /messages/.test(e.message),
    );
  },
};

await runChecks("openai-sdk", "", checks);
