// The README's LangChain JS recipes (@langchain/openai ChatOpenAI, @langchain/anthropic ChatAnthropic)
// against copilot-api and the test stub.
// Usage: BASE_URL=http://127.0.0.1:PORT node langchain.mjs   (no /v1: the OpenAI recipe adds it)
// Prints one line per check and "langchain: N passed, N failed"; exits 1 on any failure.
import assert from "node:assert/strict";
import { runChecks } from "../sdk/run-checks.mjs";
import { ChatOpenAI } from "@langchain/openai";
import { ChatAnthropic } from "@langchain/anthropic";
import { tool } from "@langchain/core/tools";
import { z } from "zod";

const base = process.env.BASE_URL;
const chat = new ChatOpenAI({ model: "gpt-4.1", apiKey: "unused", configuration: { baseURL: `${base}/v1` } });
const bash = tool(async ({ command }) => `ran ${command}`, {
  name: "Bash", description: "Run a shell command", schema: z.object({ command: z.string() }),
});

async function streamed(model) {
  let t = "";
  for await (const chunk of await model.stream("hi")) t += chunk.text;
  return t;
}

async function toolLoop(model) {
  const withTools = model.bindTools([bash]);
  const messages = [{ role: "user", content: "list files" }];
  const ai = await withTools.invoke(messages);
  assert.equal(ai.tool_calls.length, 1, JSON.stringify(ai.tool_calls));
  assert.equal(ai.tool_calls[0].name, "Bash");
  const result = await bash.invoke(ai.tool_calls[0]);
  return withTools.invoke([...messages, ai, result]);
}

await runChecks("langchain", "", {
  async "ChatOpenAI invoke (chat completions)"() {
    assert.equal((await chat.invoke("hi")).text, "Hello from gpt-4.1.");
  },

  async "ChatOpenAI stream"() {
    assert.equal(await streamed(chat), "Hello from gpt-4.1.");
  },

  async "ChatOpenAI bindTools: a tool call, then its result"() {
    assert.equal((await toolLoop(chat)).text, "Tool said: ran echo copilot-api-tool-loop");
  },

  async "ChatOpenAI with useResponsesApi on a responses-only model"() {
    const responses = new ChatOpenAI({ model: "gpt-5.1-codex", apiKey: "unused", useResponsesApi: true, configuration: { baseURL: `${base}/v1` } });
    assert.equal((await responses.invoke("hi")).text, "Hello from gpt-5.1-codex.");
  },

  async "ChatAnthropic invoke and stream (Messages API)"() {
    const claude = new ChatAnthropic({ model: "claude-sonnet-4.5", apiKey: "unused", anthropicApiUrl: base });
    assert.equal((await claude.invoke("hi")).text, "Hello from claude-sonnet-4.5.");
    assert.equal(await streamed(claude), "Hello from claude-sonnet-4.5.");
  },

  async "ChatAnthropic bindTools: a tool call, then its result"() {
    const claude = new ChatAnthropic({ model: "claude-sonnet-4.5", apiKey: "unused", anthropicApiUrl: base });
    assert.match((await toolLoop(claude)).text, /Tool said: ran echo copilot-api-tool-loop/);
  },
});
