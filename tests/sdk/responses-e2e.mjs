// End-to-end checks of the Responses API (and of chat completions on the same model) with the official
// OpenAI SDK against copilot-api and the test stub.
// Usage: BASE_URL=http://127.0.0.1:PORT/v1 MODEL=gpt-5.1-codex node responses-e2e.mjs
// A responses-only model is forwarded to Copilot's /responses; a chat model goes through the translator.
// Prints one line per check and "N passed, N failed"; exits 1 on any failure.
import assert from "node:assert/strict";
import { runChecks } from "./run-checks.mjs";
import OpenAI from "openai";

const model = process.env.MODEL;
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "unused", maxRetries: 0 });
const bash = {
  type: "function",
  name: "Bash",
  description: "Run a shell command",
  parameters: { type: "object", properties: { command: { type: "string" } }, required: ["command"] },
};

const checks = {
  async "responses.create answers text"() {
    const r = await client.responses.create({ model, input: "hi" });
    assert.equal(r.object, "response");
    assert.equal(r.status, "completed");
    assert.match(r.output_text, /^Hello from /);
    assert.ok(r.usage.output_tokens > 0, JSON.stringify(r.usage));
  },

  async "responses.stream assembles the same text from named events"() {
    const stream = client.responses.stream({ model, input: "hi" });
    const types = [];
    stream.on("event", (e) => types.push(e.type));
    const r = await stream.finalResponse();
    assert.match(r.output_text, /^Hello from /);
    assert.equal(types[0], "response.created");
    assert.equal(types.at(-1), "response.completed");
    assert.ok(types.filter((t) => t === "response.output_text.delta").length > 1, types.join(","));
  },

  async "a two-turn tool conversation: function_call, then function_call_output"() {
    const stream = client.responses.stream({ model, input: "list files", tools: [bash] });
    const first = await stream.finalResponse();
    const call = first.output.find((i) => i.type === "function_call");
    assert.ok(call, JSON.stringify(first.output));
    assert.equal(call.name, "Bash");
    assert.equal(typeof JSON.parse(call.arguments).command, "string");
    const second = await client.responses.create({
      model, tools: [bash],
      input: [
        { role: "user", content: "list files" },
        ...first.output,
        { type: "function_call_output", call_id: call.call_id, output: "a.txt b.txt" },
      ],
    });
    assert.match(second.output_text, /Tool said: a\.txt b\.txt/);
  },

  async "chat completions with tools on the same model, streamed"() {
    const stream = client.chat.completions.stream({
      model, messages: [{ role: "user", content: "list files" }],
      tools: [{ type: "function", function: { name: bash.name, description: bash.description, parameters: bash.parameters } }],
      stream_options: { include_usage: true },
    });
    const final = await stream.finalChatCompletion();
    assert.equal(final.choices[0].finish_reason, "tool_calls");
    const call = final.choices[0].message.tool_calls[0];
    assert.equal(call.function.name, "Bash");
    assert.ok(call.id);
    assert.ok(final.usage && final.usage.total_tokens > 0);
  },

  async "previous_response_id chains turns; retrieve, inputItems.list and delete read the store"() {
    const first = await client.responses.create({ model, input: "first" });
    const second = await client.responses.create({ model, input: "second", previous_response_id: first.id });
    assert.equal(second.previous_response_id, first.id);
    const got = await client.responses.retrieve(second.id);
    assert.equal(got.id, second.id);
    assert.equal(got.output_text, second.output_text);
    const items = await client.responses.inputItems.list(second.id);
    assert.deepEqual(items.data.map((i) => i.content[0].text), ["second"]);
    await client.responses.delete(first.id);
    await assert.rejects(client.responses.retrieve(first.id), (e) => e instanceof OpenAI.NotFoundError);
    await assert.rejects(client.responses.create({ model, input: "third", previous_response_id: first.id }),
      (e) => e instanceof OpenAI.NotFoundError);
  },

  async "an unknown model is a NotFoundError"() {
    await assert.rejects(
      client.responses.create({ model: "no-such-model", input: "hi" }),
      (e) => e instanceof OpenAI.NotFoundError,
    );
  },
};

if (process.env.REASONS === "1") {
  checks["reasoning comes back encrypted and can be sent back"] = async () => {
    const first = await client.responses.create({
      model, input: "think", reasoning: { effort: "low" }, include: ["reasoning.encrypted_content"], store: false,
    });
    const reasoning = first.output.find((i) => i.type === "reasoning");
    assert.ok(reasoning && reasoning.encrypted_content, JSON.stringify(first.output));
    const second = await client.responses.create({
      model, reasoning: { effort: "low" }, include: ["reasoning.encrypted_content"], store: false,
      input: [{ role: "user", content: "think" }, ...first.output, { role: "user", content: "again" }],
    });
    assert.equal(second.status, "completed");
  };
}

await runChecks("responses-sdk", `[${model}] `, checks);
