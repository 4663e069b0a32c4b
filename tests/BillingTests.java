package copilotapi;

import static copilotapi.CopilotApiTests.fixtures;
import static copilotapi.CopilotApiTests.json;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/**
 * Premium requests: which calls go to Copilot as X-Initiator user (billed) and which as agent (free), on every
 * route; subagents, the warm-up probe, the ledger in the request log and /stats, and --premium-budget.
 * The classification cases are files in tests/fixtures/billing: one new case is one new file.
 */
class BillingTests extends CopilotApiTests.WithHarness {
    @Override
    CopilotApiTests.Harness harness() throws IOException {
        return new CopilotApiTests.Harness(StubUpstream.start(), new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE, CopilotApi.Operator.Pacer.NONE,
            CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(null, null)));
    }

    /** A route and model a fixture is sent to, and the upstream path that call reaches. */
    record Target(String route, String path, String model, String upstreamPath) {}

    static final Map<String, List<Target>> TARGETS = Map.of(
        "anthropic", List.of(new Target("native", "/v1/messages", "claude-sonnet-4.5", "/v1/messages"),
            new Target("translated", "/v1/messages", "gpt-4.1", "/chat/completions")),
        "chat", List.of(new Target("passthrough", "/v1/chat/completions", "gpt-4.1", "/chat/completions"),
            new Target("translated", "/v1/chat/completions", "gpt-5.1-codex", "/responses")),
        "responses", List.of(new Target("passthrough", "/v1/responses", "gpt-5.1-codex", "/responses"),
            new Target("translated", "/v1/responses", "gpt-4.1", "/chat/completions")));

    /** Every fixture, on each route of its API, streamed and not: the initiator Copilot saw is the one expected. */
    @TestFactory
    Stream<DynamicTest> eachFixtureReachesCopilotWithItsInitiatorOnEveryRoute() throws IOException {
        List<DynamicTest> tests = new ArrayList<>();
        try (Stream<Path> files = Files.list(fixtures("billing"))) {
            for (Path file : files.sorted().toList()) {
                JsonNode fixture = json(Files.readString(file));
                for (Target t : TARGETS.get(fixture.path("api").asText())) {
                    for (boolean stream : List.of(false, true)) {
                        String name = file.getFileName() + " " + t.route() + " " + t.model() + (stream ? " streamed" : "");
                        tests.add(DynamicTest.dynamicTest(name, () -> {
                            h.stub.clear();
                            HttpResponse<String> r = h.post(t.path(), request(fixture, t.model(), stream));
                            assertEquals(200, r.statusCode(), name + ": " + r.body());
                            StubUpstream.Recorded sent = h.stub.last(t.upstreamPath());
                            // Copilot refuses agent where a user's text is last on chat completions and Responses
                            String expected = fixture.path("expectUpstream").path(t.upstreamPath()).asText(fixture.path("expect").asText());
                            assertEquals(expected, sent.headers().get("x-initiator"), name + ": " + fixture.path("why").asText());
                        }));
                    }
                }
            }
        }
        return tests.stream();
    }

    static String request(JsonNode fixture, String model, boolean stream) {
        ObjectNode body = ((ObjectNode) fixture).deepCopy();
        body.remove(List.of("why", "api", "expect", "expectUpstream"));
        body.put("model", model);
        if (fixture.path("api").asText().equals("anthropic")) body.put("max_tokens", 200);
        body.put("stream", stream);
        return body.toString();
    }

    JsonNode premium() throws Exception {
        return json(h.get("/stats").body()).path("premium");
    }

    static String warmup(String model) {
        return "{\"model\":\"" + model + "\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
            + "\"text\":\"Warmup\",\"cache_control\":{\"type\":\"ephemeral\"}}]}]}";
    }

    /** The probe's text is a user message, which Copilot refuses as agent on chat completions: user, and free all the same. */
    @Test
    void theWarmupProbeIsAnsweredByAFreeModelInTheShapeAskedFor() throws Exception {
        double before = premium().path("units").asDouble();
        HttpResponse<String> r = h.post("/v1/messages", warmup("claude-opus-4.1"));
        assertEquals(200, r.statusCode(), r.body());
        assertEquals(0, h.stub.count("/v1/messages"), "the premium model was not called");
        StubUpstream.Recorded sent = h.stub.last("/chat/completions");
        assertEquals("gpt-4.1", sent.json().path("model").asText(), "the catalog's first free model");
        assertEquals("user", sent.headers().get("x-initiator"), "Copilot refuses agent after a user's text on chat completions");
        JsonNode message = json(r.body());
        assertEquals("message", message.path("type").asText());
        assertEquals("claude-opus-4.1", message.path("model").asText(), "named as asked");
        assertEquals(before, premium().path("units").asDouble(), "no premium unit spent");
        assertTrue(premium().path("calls_by_reason").path("warmup").asInt() >= 1, premium().toString());
    }

    /** The operator's --small-model answers background calls even where it bills (BackgroundTests has the rest). */
    @Test
    void theSmallModelOptionChoosesWhichModelAnswersTheWarmup() throws Exception {
        List<JsonNode> catalog = List.of(model("claude-haiku-4.5", 0.33), model("gpt-4.1", 0), model("gpt-5-mini", 0));
        assertEquals("gpt-5-mini", warmupModel(new CopilotApi.Operator.Billing(null, "gpt-5-mini"), catalog));
        assertEquals("gpt-4.1", warmupModel(new CopilotApi.Operator.Billing(null, null), catalog), "the catalog's first free model");
        assertEquals("claude-haiku-4.5", warmupModel(new CopilotApi.Operator.Billing(null, "claude-haiku-4.5"), catalog), "as the operator chose");
        assertEquals(null, warmupModel(new CopilotApi.Operator.Billing(null, null), List.of(model("claude-sonnet-4.5", 1))));
    }

    static String warmupModel(CopilotApi.Operator.Billing billing, List<JsonNode> catalog) {
        return billing.cheapModel(catalog, CopilotApi.Operator.Billing.Need.ANY).map(m -> m.path("id").asText()).orElse(null);
    }

    static JsonNode model(String id, double multiplier) {
        return json("{\"id\":\"" + id + "\",\"capabilities\":{\"type\":\"chat\",\"limits\":{\"max_prompt_tokens\":128000}},"
            + "\"billing\":{\"multiplier\":" + multiplier + "}}");
    }

    /** The main agent's answer carries an Agent tool_use; the subagent's first call (a new conversation ending with its prompt) is agent. */
    @Test
    void aSubagentsFirstCallIsFreeOnTheNativeRouteStreamedAndNot() throws Exception {
        for (boolean stream : List.of(false, true)) subagentRoundTrip("claude-sonnet-4.5", stream, "/v1/messages");
    }

    /** On chat completions Copilot refuses agent after a person's text: the subagent goes as user (gpt-4.1 is free). */
    @Test
    void aSubagentsFirstCallGoesAsUserOnTheTranslatedRouteStreamedAndNot() throws Exception {
        for (boolean stream : List.of(false, true)) subagentRoundTrip("gpt-4.1", stream, "/chat/completions");
    }

    void subagentRoundTrip(String model, boolean stream, String upstreamPath) throws Exception {
        String expected = upstreamPath.equals("/v1/messages") ? "agent" : "user";
        String main = "{\"model\":\"" + model + "\",\"max_tokens\":300,\"stream\":" + stream + ",\"tools\":[" + tool("Bash") + "," + tool("Agent")
            + "],\"messages\":[{\"role\":\"user\",\"content\":\"Investigate this " + StubUpstream.SUBAGENT_MARKER + "\"}]}";
        HttpResponse<String> r = h.post("/v1/messages", main);
        assertEquals(200, r.statusCode(), r.body());
        assertEquals("user", h.stub.last(upstreamPath).headers().get("x-initiator"), "the person's prompt bills");
        String prompt = stream ? agentPromptFromStream(r.body()) : agentPromptFromMessage(json(r.body()));
        assertTrue(prompt.startsWith("Subagent task"), r.body());
        String subagent = "{\"model\":\"" + model + "\",\"max_tokens\":300,\"system\":\"You are an agent for Claude Code.\",\"tools\":["
            + tool("Bash") + "],\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
            + CopilotApi.JSON.writeValueAsString("<system-reminder>\nctx\n</system-reminder>") + "},{\"type\":\"text\",\"text\":" + CopilotApi.JSON.writeValueAsString(prompt) + "}]}]}";
        assertEquals(200, h.post("/v1/messages", subagent).statusCode());
        assertEquals(expected, h.stub.last(upstreamPath).headers().get("x-initiator"), "the subagent's first call (" + model + ", stream " + stream + ")");
        String other = subagent.replace("Subagent task", "A different task");
        assertEquals(200, h.post("/v1/messages", other).statusCode());
        assertEquals("user", h.stub.last(upstreamPath).headers().get("x-initiator"), "a prompt nobody handed out bills");
    }

    static String tool(String name) {
        return "{\"name\":\"" + name + "\",\"description\":\"" + name + " tool\",\"input_schema\":{\"type\":\"object\",\"properties\":"
            + "{\"prompt\":{\"type\":\"string\"}},\"required\":[\"prompt\"]}}";
    }

    static String agentPromptFromMessage(JsonNode message) {
        for (JsonNode block : message.path("content")) {
            if (block.path("name").asText().equals("Agent")) return block.path("input").path("prompt").asText();
        }
        return "";
    }

    static String agentPromptFromStream(String sse) {
        StringBuilder input = new StringBuilder();
        for (String data : CopilotApiTests.dataLines(sse)) {
            JsonNode e = json(data);
            if (e.path("delta").path("type").asText().equals("input_json_delta")) input.append(e.path("delta").path("partial_json").asText());
        }
        return input.length() == 0 ? "" : json(input.toString()).path("prompt").asText();
    }

    /** The subagent is recognised, and goes as user all the same: Copilot refuses agent after a person's text there. */
    @Test
    void aSubagentPromptHandedOutOnTheChatRouteIsRecognisedWhenItComesBack() throws Exception {
        for (boolean stream : List.of(false, true)) {
            String main = "{\"model\":\"gpt-4.1\",\"stream\":" + stream + ",\"tools\":[" + chatTool("Task") + "],\"messages\":[{\"role\":\"user\","
                + "\"content\":\"Investigate " + StubUpstream.SUBAGENT_MARKER + "\"}]}";
            HttpResponse<String> r = h.post("/v1/chat/completions", main);
            assertEquals(200, r.statusCode(), r.body());
            String prompt = stream ? chatStreamPrompt(r.body())
                : json(json(r.body()).path("choices").get(0).path("message").path("tool_calls").get(0).path("function").path("arguments").asText())
                    .path("prompt").asText();
            String sub = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"system\",\"content\":\"You are a subagent.\"},{\"role\":\"user\",\"content\":"
                + CopilotApi.JSON.writeValueAsString(prompt) + "}]}";
            long before = count(premium(), "subagent");
            assertEquals(200, h.post("/v1/chat/completions", sub).statusCode());
            assertEquals("user", h.stub.last("/chat/completions").headers().get("x-initiator"), "stream " + stream + ", prompt " + prompt);
            assertEquals(before + 1, count(premium(), "subagent"), "the ledger says it was a subagent");
        }
    }

    static String chatTool(String name) {
        return "{\"type\":\"function\",\"function\":{\"name\":\"" + name + "\",\"parameters\":{\"type\":\"object\",\"properties\":"
            + "{\"prompt\":{\"type\":\"string\"}}}}}";
    }

    static String chatStreamPrompt(String sse) {
        StringBuilder args = new StringBuilder();
        for (String data : CopilotApiTests.dataLines(sse)) {
            if (data.equals("[DONE]")) continue;
            for (JsonNode c : json(data).path("choices")) {
                for (JsonNode call : c.path("delta").path("tool_calls")) args.append(call.path("function").path("arguments").asText(""));
            }
        }
        return json(args.toString()).path("prompt").asText();
    }

    @Test
    void aSubagentPromptHandedOutOnTheResponsesRouteIsRecognisedWhenItComesBack() throws Exception {
        for (String model : List.of("gpt-5.1-codex", "gpt-4.1")) {
            for (boolean stream : List.of(false, true)) {
                String main = "{\"model\":\"" + model + "\",\"stream\":" + stream + ",\"tools\":[{\"type\":\"function\",\"name\":\"Agent\","
                    + "\"parameters\":{\"type\":\"object\",\"properties\":{\"prompt\":{\"type\":\"string\"}}}}],\"input\":\"Investigate "
                    + StubUpstream.SUBAGENT_MARKER + "\"}";
                HttpResponse<String> r = h.post("/v1/responses", main);
                assertEquals(200, r.statusCode(), r.body());
                String prompt = responsesPrompt(r.body(), stream);
                String sub = "{\"model\":\"" + model + "\",\"instructions\":\"You are a subagent.\",\"input\":" + CopilotApi.JSON.writeValueAsString(prompt) + "}";
                long before = count(premium(), "subagent");
                assertEquals(200, h.post("/v1/responses", sub).statusCode());
                String path = model.equals("gpt-4.1") ? "/chat/completions" : "/responses";
                assertEquals("user", h.stub.last(path).headers().get("x-initiator"), model + " stream " + stream + ", prompt " + prompt);
                assertEquals(before + 1, count(premium(), "subagent"), "the ledger says it was a subagent");
            }
        }
    }

    static String responsesPrompt(String body, boolean stream) {
        List<JsonNode> items = new ArrayList<>();
        if (stream) {
            for (String data : CopilotApiTests.dataLines(body)) {
                JsonNode e = json(data);
                if (e.path("type").asText().equals("response.output_item.done")) items.add(e.path("item"));
            }
        } else {
            json(body).path("output").forEach(items::add);
        }
        for (JsonNode item : items) {
            if (item.path("type").asText().equals("function_call")) return json(item.path("arguments").asText()).path("prompt").asText();
        }
        return "";
    }

    @Test
    void statsCountPremiumUnitsByModelAndCallsByReason() throws Exception {
        JsonNode before = premium();
        String prompt = "{\"model\":\"claude-opus-4.1\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
        assertEquals(200, h.post("/v1/messages", prompt).statusCode());
        String followUp = "{\"model\":\"claude-opus-4.1\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
            + "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Bash\",\"input\":{}}]},"
            + "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"ok\"}]}]}";
        assertEquals(200, h.post("/v1/messages", followUp).statusCode());
        assertEquals(200, h.post("/v1/chat/completions", "{\"model\":\"claude-haiku-4.5\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}").statusCode());
        assertEquals(200, h.post("/v1/chat/completions", "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}").statusCode());
        JsonNode after = premium();
        assertEquals(10.33, after.path("units").asDouble() - before.path("units").asDouble(), 0.001, after.toString());
        assertEquals(10, after.path("by_model").path("claude-opus-4.1").asDouble() - before.path("by_model").path("claude-opus-4.1").asDouble(), 0.001);
        assertEquals(0.33, after.path("by_model").path("claude-haiku-4.5").asDouble() - before.path("by_model").path("claude-haiku-4.5").asDouble(), 0.001);
        assertEquals(2, count(after, "premium") - count(before, "premium"));
        assertEquals(1, count(after, "continuation") - count(before, "continuation"));
        assertEquals(1, count(after, "free model") - count(before, "free model"));
        assertTrue(after.has("budget"), after.toString());
    }

    static long count(JsonNode premium, String reason) {
        return premium.path("calls_by_reason").path(reason).asLong(0);
    }

    @Test
    void theRequestLogLineSaysWhatACallCost() {
        CopilotApi.Operator.Billing.Charge billed = new CopilotApi.Operator.Billing.Charge(CopilotApi.Chat.Initiator.USER, CopilotApi.Operator.Billing.Reason.PREMIUM, 3);
        assertEquals("premium 1×3", billed.describe());
        assertEquals("premium 1×0.33", new CopilotApi.Operator.Billing.Charge(CopilotApi.Chat.Initiator.USER, CopilotApi.Operator.Billing.Reason.PREMIUM, 0.33).describe());
        assertEquals("free: subagent", new CopilotApi.Operator.Billing.Charge(CopilotApi.Chat.Initiator.AGENT, CopilotApi.Operator.Billing.Reason.SUBAGENT, 3).describe());
        assertEquals("free: free model", new CopilotApi.Operator.Billing.Charge(CopilotApi.Chat.Initiator.USER, CopilotApi.Operator.Billing.Reason.FREE_MODEL, 0).describe());
        assertEquals("premium 1×1: subagent sent as user, Copilot refuses agent there",
            new CopilotApi.Operator.Billing.Charge(CopilotApi.Chat.Initiator.USER, CopilotApi.Operator.Billing.Reason.SUBAGENT, 1).describe());
        assertEquals("free: warmup sent as user, Copilot refuses agent there",
            new CopilotApi.Operator.Billing.Charge(CopilotApi.Chat.Initiator.USER, CopilotApi.Operator.Billing.Reason.WARMUP, 0).describe());
    }

    /** A budget of 1: one Sonnet prompt passes, the next prompt is a 429 in the caller's shape, tool follow-ups and free models pass. */
    @Test
    void aPremiumBudgetRefusesTheNextPromptButNotContinuations() throws Exception {
        try (CopilotApiTests.Harness b = new CopilotApiTests.Harness(StubUpstream.start(), new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE,
                CopilotApi.Operator.Pacer.NONE, CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(1.0, null)))) {
            String prompt = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            assertEquals(200, b.post("/v1/messages", prompt).statusCode());
            HttpResponse<String> refused = b.post("/v1/messages", prompt);
            assertEquals(429, refused.statusCode(), refused.body());
            assertEquals("error", json(refused.body()).path("type").asText(), "Anthropic's error shape");
            assertTrue(json(refused.body()).path("error").path("message").asText().contains("--premium-budget 1"), refused.body());
            assertEquals(1, b.stub.count("/v1/messages"), "Copilot was not called for the refused prompt");
            HttpResponse<String> chat = b.post("/v1/chat/completions", "{\"model\":\"claude-sonnet-4.5\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}");
            assertEquals(429, chat.statusCode());
            assertEquals("premium_budget_exceeded", json(chat.body()).path("error").path("code").asText(), "OpenAI's error shape: " + chat.body());
            String followUp = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
                + "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Bash\",\"input\":{}}]},"
                + "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"ok\"}]}]}";
            assertEquals(200, b.post("/v1/messages", followUp).statusCode(), "a continuation still passes");
            assertEquals(200, b.post("/v1/chat/completions", "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}").statusCode(),
                "a free model still passes");
            assertEquals(1.0, json(b.get("/stats").body()).path("premium").path("units").asDouble(), 0.001);
        }
    }

    /**
     * A Copilot outage and the client's retries cost nothing: a call Copilot fails or refuses is released from the
     * budget, on every route, streamed and not; the next prompt after the outage is served and is the one that bills.
     */
    @Test
    void aCallCopilotFailsOrRefusesCostsNothing() throws Exception {
        try (CopilotApiTests.Harness b = new CopilotApiTests.Harness(StubUpstream.start(), new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE,
                CopilotApi.Operator.Pacer.NONE, CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(1.0, null)))) {
            String prompt = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            String streamed = prompt.replace("{\"model\"", "{\"stream\":true,\"model\"");
            b.stub.enqueue("/v1/messages", StubUpstream.Reply.error(503, "service_unavailable", "stub: outage"));
            b.stub.enqueue("/v1/messages", StubUpstream.Reply.error(503, "service_unavailable", "stub: outage"));
            b.stub.enqueue("/v1/messages", StubUpstream.Reply.error(400, "bad_request", "stub: refused"));
            assertEquals(503, b.post("/v1/messages", prompt).statusCode());
            assertEquals(503, b.post("/v1/messages", streamed).statusCode(), "a stream refused before its first byte");
            assertEquals(400, b.post("/v1/messages", prompt).statusCode());
            b.stub.enqueue("/chat/completions", StubUpstream.Reply.error(500, "server_error", "stub: outage"));
            String chat = "{\"model\":\"gemini-2.5-pro\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            assertEquals(500, b.post("/v1/chat/completions", chat).statusCode());
            b.stub.enqueue("/responses", StubUpstream.Reply.error(503, "service_unavailable", "stub: outage"));
            assertEquals(503, b.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"Hi\"}").statusCode());
            JsonNode spent = json(b.get("/stats").body()).path("premium");
            assertEquals(0.0, spent.path("units").asDouble(), 0.001, "nothing billed for failed calls: " + spent);
            HttpResponse<String> after = b.post("/v1/messages", prompt);
            assertEquals(200, after.statusCode(), "the prompt after the outage is served: " + after.body());
            assertEquals(1.0, json(b.get("/stats").body()).path("premium").path("units").asDouble(), 0.001);
            assertEquals(1, count(json(b.get("/stats").body()).path("premium"), "premium"), "one call billed");
            assertEquals(429, b.post("/v1/messages", prompt).statusCode(), "and the budget still holds");
        }
    }

    /** Once Copilot has begun to answer, the call stands as billed, even when its stream breaks later. */
    @Test
    void aStreamCopilotBeganToAnswerStaysBilledWhenItBreaks() throws Exception {
        try (CopilotApiTests.Harness b = new CopilotApiTests.Harness(StubUpstream.start(), new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE,
                CopilotApi.Operator.Pacer.NONE, CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(1.0, null)))) {
            b.stub.enqueue("/v1/messages", StubUpstream.Reply.rawSse(CopilotApiTests.UpstreamScripts.MESSAGES_HEAD
                + CopilotApiTests.UpstreamScripts.MESSAGES_TAIL).cutAfter(3));
            String prompt = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            HttpResponse<String> broken = b.post("/v1/messages", prompt);
            assertEquals(200, broken.statusCode());
            assertTrue(broken.body().contains("event: error"), broken.body());
            assertEquals(1.0, json(b.get("/stats").body()).path("premium").path("units").asDouble(), 0.001, "billed: Copilot answered");
            assertEquals(429, b.post("/v1/messages", prompt).statusCode(), "the budget is spent");
        }
    }

    /** Bad input is refused as bad input even when the budget is spent: checking comes before charging on every route. */
    @Test
    void badInputIsRefusedBeforeAnyCharge() throws Exception {
        try (CopilotApiTests.Harness b = new CopilotApiTests.Harness(StubUpstream.start(), new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE,
                CopilotApi.Operator.Pacer.NONE, CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(0.0, null)))) {
            HttpResponse<String> messages = b.post("/v1/messages", "{\"model\":\"gemini-2.5-pro\",\"max_tokens\":10,"
                + "\"messages\":[{\"role\":\"robot\",\"content\":\"Hi\"}]}");
            assertEquals(400, messages.statusCode(), "translated Messages: " + messages.body());
            HttpResponse<String> responses = b.post("/v1/responses", "{\"model\":\"gemini-2.5-pro\","
                + "\"input\":[{\"type\":\"message\",\"role\":\"robot\",\"content\":\"Hi\"}]}");
            assertEquals(400, responses.statusCode(), "translated Responses: " + responses.body());
            HttpResponse<String> chat = b.post("/v1/chat/completions", "{\"model\":\"gpt-5.1-codex\",\"n\":2,"
                + "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}");
            assertEquals(400, chat.statusCode(), "translated chat completions: " + chat.body());
            assertEquals(0, b.stub.requests().stream().filter(r -> !r.path().contains("models") && !r.path().contains("token")
                && !r.path().contains("user")).count(), "Copilot was not called");
            HttpResponse<String> valid = b.post("/v1/messages", "{\"model\":\"gemini-2.5-pro\",\"max_tokens\":10,"
                + "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}");
            assertEquals(429, valid.statusCode(), "a valid premium prompt meets the spent budget: " + valid.body());
        }
    }

    /** A body past Copilot's /responses cap is a 413 even when the budget is spent, on each route that reaches /responses. */
    @Test
    void aBodyPastCopilotsCapIsRefusedBeforeAnyCharge() throws Exception {
        try (CopilotApiTests.Harness b = new CopilotApiTests.Harness(StubUpstream.start(), new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE,
                CopilotApi.Operator.Pacer.NONE, CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(0.0, null)))) {
            String big = "x".repeat(StubUpstream.RESPONSES_CAP);
            assertEquals(413, b.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"" + big + "\"}").statusCode(), "forwarded");
            assertEquals(413, b.post("/v1/messages", "{\"model\":\"gpt-5.1-codex\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\","
                + "\"content\":\"" + big + "\"}]}").statusCode(), "translated Messages");
            assertEquals(413, b.post("/v1/chat/completions", "{\"model\":\"gpt-5.1-codex\",\"stream\":true,\"messages\":[{\"role\":\"user\","
                + "\"content\":\"" + big + "\"}]}").statusCode(), "chat completions");
            assertEquals(0, b.stub.count("/responses"), "refused before Copilot");
            assertEquals(429, b.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\"}").statusCode(),
                "a valid prompt meets the spent budget");
        }
    }

    @Test
    void turnClassificationKeepsThePersonsLastText() {
        JsonNode messages = json("[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"<system-reminder>x</system-reminder>\"},"
            + "{\"type\":\"text\",\"text\":\"first\"},{\"type\":\"text\",\"text\":\"second\"}]}]");
        CopilotApi.Chat.Turn turn = CopilotApi.Chat.Turn.ofMessages(messages);
        assertEquals(CopilotApi.Chat.Turn.Kind.PROMPT, turn.kind());
        assertEquals("second", turn.personText());
        assertTrue(turn.opensConversation());
        assertFalse(CopilotApi.Chat.Turn.ofResponsesInput(json("\"hi\""), true).opensConversation(), "previous_response_id continues a conversation");
        assertTrue(CopilotApi.Chat.Turn.isReminder("<system-reminder>a</system-reminder>\n <system-reminder>b</system-reminder>"));
        assertFalse(CopilotApi.Chat.Turn.isReminder("<system-reminder>a</system-reminder> b"));
        assertFalse(CopilotApi.Chat.Turn.isReminder("<system-reminder> never closed"));
    }

    @Test
    void subagentPromptsAreBoundedInCountAndAge() throws Exception {
        CopilotApi.Operator.SubagentPrompts few = new CopilotApi.Operator.SubagentPrompts(2, java.time.Duration.ofHours(1));
        for (String p : List.of("one", "two", "three")) few.toolCall("Agent", json("{\"prompt\":\"" + p + "\"}"));
        assertFalse(few.isRemembered("one"), "the oldest is forgotten past the count");
        assertTrue(few.isRemembered("two") && few.isRemembered("three"));
        few.toolCall("Bash", json("{\"prompt\":\"four\"}"));
        assertFalse(few.isRemembered("four"), "only Agent and Task start subagents");
        CopilotApi.Operator.SubagentPrompts brief = new CopilotApi.Operator.SubagentPrompts(10, java.time.Duration.ofMillis(50));
        brief.toolCall("Task", "{\"prompt\":\"old\"}");
        assertTrue(brief.isRemembered("old"));
        Thread.sleep(120);
        assertFalse(brief.isRemembered("old"), "forgotten past the age");
    }

    @Test
    void theDashboardShowsWhatThisServerSpentBesideTheQuota() throws Exception {
        try (CopilotApiTests.Harness d = new CopilotApiTests.Harness(StubUpstream.start(), new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE,
                CopilotApi.Operator.Pacer.NONE, CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(50.0, null)))) {
            assertEquals(200, d.post("/v1/messages", "{\"model\":\"claude-opus-4.1\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}")
                .statusCode());
            assertEquals(200, d.post("/v1/messages", warmup("claude-haiku-4.5")).statusCode());
            String dom = CopilotApiTests.DashboardTests.render(d.url("/dashboard"));
            assertTrue(dom.contains("<b>10</b> premium requests spent by this server since start of a --premium-budget of 50 (claude-opus-4.1 10)"), dom);
            assertTrue(dom.contains("model calls by billing: premium 1 · warmup 1"), dom);
            assertTrue(dom.indexOf("Premium requests") < dom.indexOf("spent by this server"), "beside GitHub's quota bar");
        }
    }

    @Test
    void claudeCodeSetupListsWhatEachModelCostsAndProposesAFreeSmallModel() {
        List<JsonNode> catalog = List.of(model("claude-sonnet-4.5", 1), model("claude-opus-4.1", 10), model("claude-haiku-4.5", 0.33),
            model("gpt-4.1", 0));
        assertEquals(List.of("claude-sonnet-4.5 (1 premium request)", "claude-opus-4.1 (10 premium requests)",
            "claude-haiku-4.5 (0.33 premium requests)", "gpt-4.1 (free)"),
            CopilotApi.ClaudeCodeSetup.labels(catalog, List.of("claude-sonnet-4.5", "claude-opus-4.1", "claude-haiku-4.5", "gpt-4.1")));
        List<String> ids = List.of("claude-sonnet-4.5", "claude-opus-4.1", "claude-haiku-4.5", "gpt-4.1");
        assertEquals(3, CopilotApi.ClaudeCodeSetup.smallDefault(catalog, ids), "the free model is proposed for the haiku slot");
        assertEquals(2, CopilotApi.ClaudeCodeSetup.smallDefault(catalog.subList(0, 3), ids.subList(0, 3)), "no free model: the haiku family");
    }
}
