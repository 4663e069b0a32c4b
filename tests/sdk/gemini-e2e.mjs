// End-to-end checks with Google's Gen AI SDK (@google/genai) against a running copilot-api whose upstream is the
// test stub. Usage: BASE_URL=http://127.0.0.1:PORT MODEL=gemini-2.5-pro node gemini-e2e.mjs
// The SDK's default API version is used (v1 in 3.x), with the base URL and an API key as a user would set them.
// Prints one line per check and "N passed, N failed"; exits 1 on failure.
import assert from "node:assert/strict";
import { runChecks } from "./run-checks.mjs";
import { ApiError, GoogleGenAI, Type } from "@google/genai";

const model = process.env.MODEL;
const ai = new GoogleGenAI({ apiKey: "copilot-api", httpOptions: { baseUrl: process.env.BASE_URL } });
const shell = {
  functionDeclarations: [{
    name: "run_shell_command",
    description: "Run a shell command",
    parameters: { type: Type.OBJECT, properties: { command: { type: Type.STRING } }, required: ["command"] },
  }],
};
// a 1x1 PNG
const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

const checks = {
  async "generateContent answers text with a finish reason and usage"() {
    const r = await ai.models.generateContent({ model, contents: "hi" });
    assert.equal(r.text, `Hello from ${model}.`);
    assert.equal(r.candidates[0].finishReason, "STOP");
    assert.ok(r.usageMetadata.promptTokenCount > 0 && r.usageMetadata.totalTokenCount > 0, JSON.stringify(r.usageMetadata));
    assert.equal(r.modelVersion, model);
    assert.ok(r.responseId);
  },

  async "generateContentStream yields events as Copilot sends them"() {
    const stream = await ai.models.generateContentStream({ model, contents: "hi" });
    const arrivals = [];
    let text = "", last;
    for await (const chunk of stream) {
      arrivals.push(Date.now());
      text += chunk.text ?? "";
      last = chunk;
    }
    assert.equal(text, `Hello from ${model}.`);
    assert.ok(arrivals.length > 2, `${arrivals.length} events`);
    // the stub waits between its chunks: events that arrived together were buffered somewhere
    assert.ok(arrivals.at(-1) - arrivals[0] >= 100, `all events within ${arrivals.at(-1) - arrivals[0]} ms`);
    assert.equal(last.candidates[0].finishReason, "STOP");
    assert.ok(last.usageMetadata.totalTokenCount > 0);
  },

  async "countTokens gives a real estimate"() {
    const small = await ai.models.countTokens({ model, contents: "hi" });
    const big = await ai.models.countTokens({ model, contents: "hello world ".repeat(500) });
    assert.ok(small.totalTokens > 0);
    assert.ok(big.totalTokens > small.totalTokens + 500, `${small.totalTokens} vs ${big.totalTokens}`);
  },

  async "a function call, then its response, completes the loop"() {
    const ask = { role: "user", parts: [{ text: "list files" }] };
    const first = await ai.models.generateContent({ model, contents: [ask], config: { tools: [shell] } });
    const calls = first.functionCalls;
    assert.equal(calls?.length, 1, JSON.stringify(first.candidates));
    assert.equal(calls[0].name, "run_shell_command");
    assert.equal(typeof calls[0].args.command, "string");
    assert.ok(calls[0].id, "the call has an id");
    const second = await ai.models.generateContent({
      model, config: { tools: [shell] },
      contents: [ask, first.candidates[0].content,
        { role: "user", parts: [{ functionResponse: { id: calls[0].id, name: calls[0].name, response: { output: "a.txt b.txt" } } }] }],
    });
    assert.match(second.text, /Tool said: a\.txt b\.txt/);
  },

  async "a streamed function call arrives whole"() {
    const stream = await ai.models.generateContentStream({ model, contents: "list files", config: { tools: [shell] } });
    const calls = [];
    for await (const chunk of stream) calls.push(...(chunk.functionCalls ?? []));
    assert.equal(calls.length, 1);
    assert.equal(calls[0].name, "run_shell_command");
    assert.equal(typeof calls[0].args.command, "string");
  },

  async "thinking with includeThoughts gives thought parts and a signature"() {
    const r = await ai.models.generateContent({
      model, contents: "think", config: { thinkingConfig: { includeThoughts: true, thinkingBudget: 2048 } },
    });
    const parts = r.candidates[0].content.parts;
    const thought = parts.filter((p) => p.thought).map((p) => p.text).join("");
    assert.ok(thought.length > 0, JSON.stringify(parts));
    assert.ok(parts.some((p) => !p.thought && p.thoughtSignature), JSON.stringify(parts));
    assert.equal(r.text, `Hello from ${model}.`, "the answer's text leaves the thoughts out");
  },

  async "an image is read"() {
    const r = await ai.models.generateContent({
      model, contents: [{ role: "user", parts: [{ text: "what is this?" }, { inlineData: { mimeType: "image/png", data: PNG } }] }],
    });
    assert.equal(r.text, `Hello from ${model}.`);
  },

  async "the model list and one model"() {
    const seen = [];
    for await (const m of await ai.models.list()) seen.push(m.name);
    assert.ok(seen.includes(`models/${model}`), seen.join(", "));
    const one = await ai.models.get({ model });
    assert.equal(one.name, `models/${model}`);
    assert.ok(one.inputTokenLimit > 0);
  },

  async "an unknown model is an ApiError 404"() {
    await assert.rejects(
      ai.models.generateContent({ model: "no-such-model", contents: "hi" }),
      (e) => e instanceof ApiError && e.status === 404 && /NOT_FOUND/.test(e.message),
    );
  },
};

// The stub thinks only as Claude models do; other models' thinking is checked by the Java tests.
if (!model.startsWith("claude")) delete checks["thinking with includeThoughts gives thought parts and a signature"];

await runChecks("genai-sdk", `[${model}] `, checks);
