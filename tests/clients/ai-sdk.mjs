// The README's Vercel AI SDK recipe (ai + @ai-sdk/openai) against copilot-api and the test stub.
// Usage: BASE_URL=http://127.0.0.1:PORT/v1 node ai-sdk.mjs
// openai.chat(...) goes to /v1/chat/completions; openai(...) and openai.responses(...) to /v1/responses.
// Prints one line per check and "ai-sdk: N passed, N failed"; exits 1 on any failure.
import assert from "node:assert/strict";
import { runChecks } from "../sdk/run-checks.mjs";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, tool, stepCountIs, APICallError } from "ai";
import { z } from "zod";

// Every request body the provider sends, to see what it referred to by id.
const sent = [];
const openai = createOpenAI({
  baseURL: process.env.BASE_URL, apiKey: "unused",
  fetch: (url, init) => { if (typeof init?.body === "string") sent.push(JSON.parse(init.body)); return fetch(url, init); },
});
// With store: false the provider sends the items themselves instead of item_reference ids; both work.
const stateless = { openai: { store: false } };
const ran = [];
const tools = {
  Bash: tool({
    description: "Run a shell command",
    inputSchema: z.object({ command: z.string() }),
    execute: async ({ command }) => { ran.push(command); return `ran ${command}`; },
  }),
};

// The ids the requests sent so far referred to with item_reference items.
function references() {
  return sent.flatMap((body) => (Array.isArray(body.input) ? body.input : [])).filter((i) => i.type === "item_reference").map((i) => i.id);
}

async function text(result) {
  let t = "";
  for await (const delta of result.textStream) t += delta;
  return t;
}

// A first turn, then a second one that carries the first answer back and runs a two-step tool loop.
async function twoTurnsWithATool(model, providerOptions) {
  const first = await generateText({ model, prompt: "hi", providerOptions });
  ran.length = 0;
  return generateText({
    model, tools, stopWhen: stepCountIs(3), providerOptions,
    messages: [{ role: "user", content: "hi" }, ...first.response.messages, { role: "user", content: "list files" }],
  });
}

await runChecks("ai-sdk", "", {
  async "generateText with openai.chat (chat completions)"() {
    const r = await generateText({ model: openai.chat("gpt-4.1"), prompt: "hi" });
    assert.equal(r.text, "Hello from gpt-4.1.");
    assert.ok(r.usage.outputTokens > 0, JSON.stringify(r.usage));
  },

  async "streamText with openai.chat"() {
    assert.equal(await text(streamText({ model: openai.chat("gpt-4.1"), prompt: "hi" })), "Hello from gpt-4.1.");
  },

  async "a two-step tool loop with openai.chat needs no option"() {
    ran.length = 0;
    const r = await generateText({ model: openai.chat("gpt-4.1"), prompt: "list files", tools, stopWhen: stepCountIs(3) });
    assert.deepEqual(ran, ["echo copilot-api-tool-loop"]);
    assert.equal(r.steps.length, 2);
    assert.equal(r.text, "Tool said: ran echo copilot-api-tool-loop");
  },

  async "generateText with openai(...) (Responses API, responses-only model)"() {
    const r = await generateText({ model: openai("gpt-5.1-codex"), prompt: "hi" });
    assert.equal(r.text, "Hello from gpt-5.1-codex.");
  },

  async "streamText with openai.responses(...)"() {
    assert.equal(await text(streamText({ model: openai.responses("gpt-5.1-codex"), prompt: "hi" })), "Hello from gpt-5.1-codex.");
  },

  async "by default (store on), two turns and a tool loop on a chat model, by item_reference"() {
    // The provider's default: later turns refer to copilot-api's earlier answers by id; copilot-api resolves them.
    sent.length = 0;
    const r = await twoTurnsWithATool(openai.responses("gpt-4.1"), {});
    assert.deepEqual(ran, ["echo copilot-api-tool-loop"]);
    assert.equal(r.steps.length, 2);
    assert.equal(r.text, "Tool said: ran echo copilot-api-tool-loop");
    const refs = references();
    assert.ok(refs.some((id) => id.startsWith("msg_")), "the earlier answer went back by reference: " + refs);
  },

  async "by default, a tool loop with reasoning on a responses-only model, by item_reference"() {
    sent.length = 0;
    const r = await twoTurnsWithATool(openai.responses("gpt-5.1-codex"), { openai: { reasoningEffort: "low" } });
    assert.deepEqual(ran, ["echo copilot-api-tool-loop"]);
    assert.equal(r.steps.length, 2);
    assert.equal(r.text, "Tool said: ran echo copilot-api-tool-loop");
    assert.ok(r.steps[0].reasoningText, "the stub's reasoning came back");
    const refs = references();
    assert.ok(refs.some((id) => id.startsWith("rs_")), "the reasoning went back by reference: " + refs);
  },

  async "with store: false, two turns and a tool loop on a chat model through /v1/responses"() {
    const r = await twoTurnsWithATool(openai.responses("gpt-4.1"), stateless);
    assert.deepEqual(ran, ["echo copilot-api-tool-loop"]);
    assert.equal(r.steps.length, 2);
    assert.equal(r.text, "Tool said: ran echo copilot-api-tool-loop");
  },

  // Last, so the stub's last /responses request is this loop's second step (ClientRecipeTests reads it).
  async "with store: false, two turns and a tool loop on a responses-only model, reasoning on"() {
    const r = await twoTurnsWithATool(openai.responses("gpt-5.1-codex"), { openai: { store: false, reasoningEffort: "low" } });
    assert.deepEqual(ran, ["echo copilot-api-tool-loop"]);
    assert.equal(r.steps.length, 2);
    assert.equal(r.text, "Tool said: ran echo copilot-api-tool-loop");
    assert.ok(r.steps[0].reasoningText, "the stub's reasoning came back");
  },
});
