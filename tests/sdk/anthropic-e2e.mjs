// End-to-end checks with the official Anthropic SDK against a running copilot-api whose upstream is the
// test stub. Usage: BASE_URL=http://127.0.0.1:PORT MODEL=claude-sonnet-4-5-20250929 node anthropic-e2e.mjs
// MODEL picks the route: a Claude model goes to Copilot's native /v1/messages, others through the
// chat-completions translator. Prints one line per check and "N passed, N failed"; exits 1 on failure.
import assert from "node:assert/strict";
import { runChecks } from "./run-checks.mjs";
import Anthropic from "@anthropic-ai/sdk";

const model = process.env.MODEL;
const client = new Anthropic({ baseURL: process.env.BASE_URL, apiKey: "unused", maxRetries: 0 });
const bash = {
  name: "Bash",
  description: "Run a shell command",
  input_schema: { type: "object", properties: { command: { type: "string" } }, required: ["command"] },
};
const user = (text) => [{ role: "user", content: text }];

function textOf(message) {
  return message.content.filter((b) => b.type === "text").map((b) => b.text).join("");
}

const checks = {
  async "messages.create answers text"() {
    const m = await client.messages.create({ model, max_tokens: 256, messages: user("hi") });
    assert.equal(m.type, "message");
    assert.equal(m.role, "assistant");
    assert.match(textOf(m), /^Hello from /);
    assert.equal(m.stop_reason, "end_turn");
    assert.ok(m.usage.output_tokens > 0);
  },

  async "messages.stream assembles the same text, event by event"() {
    const stream = client.messages.stream({ model, max_tokens: 256, messages: user("hi") });
    const seen = [];
    stream.on("streamEvent", (e) => seen.push(e.type));
    const m = await stream.finalMessage();
    assert.match(textOf(m), /^Hello from /);
    assert.equal(seen[0], "message_start");
    assert.equal(seen.at(-1), "message_stop");
    assert.ok(seen.filter((t) => t === "content_block_delta").length > 1, seen.join(","));
  },

  async "a streamed tool call, then the tool result, completes the loop"() {
    const stream = client.messages.stream({ model, max_tokens: 1024, messages: user("list files"), tools: [bash] });
    const first = await stream.finalMessage();
    assert.equal(first.stop_reason, "tool_use");
    const call = first.content.find((b) => b.type === "tool_use");
    assert.ok(call, JSON.stringify(first.content));
    assert.equal(call.name, "Bash");
    assert.equal(typeof call.input.command, "string");
    const second = await client.messages.create({
      model, max_tokens: 1024, tools: [bash],
      messages: [
        ...user("list files"),
        { role: "assistant", content: first.content },
        { role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: "a.txt b.txt" }] },
      ],
    });
    assert.match(textOf(second), /Tool said: a\.txt b\.txt/);
    assert.equal(second.stop_reason, "end_turn");
  },

  async "thinking comes back as a thinking block with a signature"() {
    const m = await client.messages.create({
      model, max_tokens: 4096, thinking: { type: "enabled", budget_tokens: 2048 }, messages: user("think"),
    });
    const thinking = m.content.find((b) => b.type === "thinking");
    assert.ok(thinking, JSON.stringify(m.content));
    assert.ok(thinking.thinking.length > 0);
    assert.ok(thinking.signature.length > 0);
    assert.equal(m.content[0].type, "thinking", "thinking comes first");
  },

  async "count_tokens gives a real estimate"() {
    const small = await client.messages.countTokens({ model, messages: user("hi") });
    const big = await client.messages.countTokens({ model, messages: user("hello world ".repeat(500)) });
    assert.ok(small.input_tokens > 0);
    assert.ok(big.input_tokens > small.input_tokens + 500, `${small.input_tokens} vs ${big.input_tokens}`);
  },

  async "an unknown model is a NotFoundError"() {
    await assert.rejects(
      client.messages.create({ model: "no-such-model", max_tokens: 10, messages: user("hi") }),
      (e) => e instanceof Anthropic.NotFoundError && /no-such-model/.test(e.message),
    );
  },

  async "a missing max_tokens is a BadRequestError"() {
    await assert.rejects(
      client.messages.create({ model, messages: user("hi") }),
      (e) => e instanceof Anthropic.BadRequestError && /max_tokens/.test(e.message),
    );
  },
};

// The stub only thinks as Claude models do; other models' thinking is checked in the translator's fixtures.
if (process.env.THINKS === "0") delete checks["thinking comes back as a thinking block with a signature"];

await runChecks("anthropic-sdk", `[${model}] `, checks);
