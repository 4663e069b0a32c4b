package copilotapi;

import static copilotapi.CopilotApiTests.json;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/**
 * Background calls (issue 18): Claude Code's Warmup, title and compaction calls, Codex's compaction, and other side
 * calls no person typed go to the cheap model (--small-model; else the lowest token prices on a usage-based plan, a
 * free model on a legacy one), keep the name asked for, and are counted apart in the log, /history and /stats.
 */
class BackgroundTests {
    static final String TITLE_SYSTEM = "You are naming a coding session so the user can pick it out of a long list of sessions.";
    static final String CLAUDE_COMPACT = "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.\n\nYour task is to create a detailed summary.";
    static final String CODEX_COMPACT = "You are performing a CONTEXT CHECKPOINT COMPACTION. Create a handoff summary for another LLM.";
    static final String REMINDER = "<system-reminder>\nThe date is 2026-12-03.\n</system-reminder>";

    static CopilotApiTests.Harness harness(StubUpstream stub, String smallModel) throws IOException {
        return new CopilotApiTests.Harness(stub, new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE, CopilotApi.Operator.Pacer.NONE,
            CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(null, smallModel)));
    }

    /** A usage-based account where gpt-5-mini is the cheapest chat model by far. */
    static StubUpstream usageBased() throws IOException {
        return StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED).tokenPrices("gpt-5-mini", 25, 200);
    }

    // ==== 1. Telling a background call by what it carries ====

    static JsonNode anthropic(String system, String... userTexts) {
        ObjectNode body = json("{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":200}").deepCopy();
        if (system != null) body.putArray("system").addObject().put("type", "text").put("text", system);
        var messages = body.putArray("messages");
        for (int i = 0; i < userTexts.length; i++) {
            if (i > 0) messages.addObject().put("role", "assistant").put("content", "Done.");
            messages.addObject().put("role", "user").putArray("content").addObject().put("type", "text").put("text", userTexts[i]);
        }
        return body;
    }

    static CopilotApi.Chat.Turn.Kind kindOfAnthropic(JsonNode body) {
        return CopilotApi.Chat.BackgroundCalls.anthropic(body).kind();
    }

    @Test
    void eachBackgroundKindIsToldByWhatItCarries() {
        assertEquals(CopilotApi.Chat.Turn.Kind.TITLE, kindOfAnthropic(anthropic(TITLE_SYSTEM, "<session>\nFix the login bug\n</session>")));
        assertEquals(CopilotApi.Chat.Turn.Kind.TITLE, kindOfAnthropic(anthropic("Analyze if this message indicates a new conversation topic. "
            + "If it does, extract a 2-3 word title.", "Fix the login bug")), "Claude Code's older topic call");
        ObjectNode schema = anthropic(null, "<session>\nFix the login bug\n</session>").deepCopy();
        schema.putObject("output_config").putObject("format").put("type", "json_schema").putObject("schema").put("type", "object")
            .putObject("properties").putObject("title").put("type", "string");
        assertEquals(CopilotApi.Chat.Turn.Kind.TITLE, kindOfAnthropic(schema), "a call whose whole answer is a title");
        assertEquals(CopilotApi.Chat.Turn.Kind.COMPACTION, kindOfAnthropic(anthropic("You are Claude Code.", "Fix the login bug", CLAUDE_COMPACT)));
        assertEquals(CopilotApi.Chat.Turn.Kind.COMPACTION, kindOfAnthropic(anthropic(
            "You are a helpful AI assistant tasked with summarizing conversations.", "Fix the login bug", "Summarize.")), "older Claude Code");
        assertEquals(CopilotApi.Chat.Turn.Kind.SIDE_CALL, kindOfAnthropic(anthropic("You are a helper.", REMINDER)),
            "a new conversation that carries no person's text");
        JsonNode chat = json("{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"system\",\"content\":\"You are a title generator. "
            + "You output ONLY a thread title.\"},{\"role\":\"user\",\"content\":\"Fix the login bug\"}]}");
        assertEquals(CopilotApi.Chat.Turn.Kind.TITLE, CopilotApi.Chat.BackgroundCalls.chat(chat).kind(), "opencode's title call");
        JsonNode codex = json("{\"model\":\"gpt-5.1-codex\",\"input\":[{\"type\":\"message\",\"role\":\"user\",\"content\":[{\"type\":"
            + "\"input_text\",\"text\":\"Fix the login bug\"}]},{\"type\":\"message\",\"role\":\"user\",\"content\":[{\"type\":\"input_text\","
            + "\"text\":" + CopilotApi.Json.write(CopilotApi.JSON.valueToTree(CODEX_COMPACT)) + "}]}]}");
        assertEquals(CopilotApi.Chat.Turn.Kind.COMPACTION, CopilotApi.Chat.BackgroundCalls.responses(codex, codex.path("input"), false).kind());
        JsonNode trigger = json("{\"model\":\"gpt-5.1-codex\",\"input\":[{\"type\":\"message\",\"role\":\"user\",\"content\":\"Fix it\"},"
            + "{\"type\":\"compaction_trigger\"}]}");
        assertEquals(CopilotApi.Chat.Turn.Kind.COMPACTION, CopilotApi.Chat.BackgroundCalls.responses(trigger, trigger.path("input"), false).kind(),
            "Codex's remote compaction");
        assertTrue(CopilotApi.Chat.Turn.Kind.WARMUP.background() && !CopilotApi.Chat.Turn.Kind.PROMPT.background()
            && !CopilotApi.Chat.Turn.Kind.CONTINUATION.background());
    }

    @Test
    void aPersonsPromptOfTheSameShapeIsNeverBackground() {
        JsonNode warmupTyped = json("{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":"
            + "[{\"type\":\"text\",\"text\":\"Warmup\"}]}]}");
        assertEquals(CopilotApi.Chat.Turn.Kind.PROMPT, kindOfAnthropic(warmupTyped), "a person typing Warmup, not the probe");
        assertEquals(CopilotApi.Chat.Turn.Kind.PROMPT, kindOfAnthropic(anthropic("You are Claude Code.",
            "Why does my app print '" + CLAUDE_COMPACT + "'?")), "the marker quoted inside a person's text");
        assertEquals(CopilotApi.Chat.Turn.Kind.PROMPT, kindOfAnthropic(anthropic("You are Claude Code.",
            "Give this session a title and summarize our conversation")), "a person asking for a title in the main conversation");
        ObjectNode schema = anthropic("You are Claude Code.", "List the bugs").deepCopy();
        var properties = schema.putObject("output_config").putObject("format").put("type", "json_schema").putObject("schema")
            .putObject("properties");
        properties.putObject("title").put("type", "string");
        properties.putObject("bugs").put("type", "array");
        assertEquals(CopilotApi.Chat.Turn.Kind.PROMPT, kindOfAnthropic(schema), "structured output that is more than a title");
        assertEquals(CopilotApi.Chat.Turn.Kind.CONTINUATION, kindOfAnthropic(anthropic("You are Claude Code.", "Fix it", REMINDER)),
            "reminders inside the main conversation continue it: not a side call");
        JsonNode chat = json("{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"},"
            + "{\"role\":\"user\",\"content\":\"You are a title generator, said my teacher. Is that a job?\"}]}");
        assertEquals(CopilotApi.Chat.Turn.Kind.PROMPT, CopilotApi.Chat.BackgroundCalls.chat(chat).kind());
    }

    // ==== 2. The cheap model ====

    static JsonNode model(String id, double multiplier, String prices, int prompt, boolean tools, String... endpoints) {
        ObjectNode m = json("{\"id\":\"" + id + "\",\"capabilities\":{\"type\":\"chat\",\"limits\":{\"max_prompt_tokens\":" + prompt
            + "},\"supports\":{\"tool_calls\":" + tools + "}},\"billing\":{\"multiplier\":" + multiplier + "}}").deepCopy();
        if (prices != null) ((ObjectNode) m.path("billing")).set("token_prices", json(prices));
        var list = m.putArray("supported_endpoints");
        for (String e : endpoints) list.add(e);
        return m;
    }

    static String prices(double in, double out) {
        return "{\"batch_size\":1000000,\"input_price\":" + in + ",\"output_price\":" + out + "}";
    }

    static final List<String> ANY = List.of("/v1/messages", "/chat/completions", "/responses");

    static String cheap(CopilotApi.Operator.Billing billing, List<JsonNode> catalog, boolean tools, long tokens) {
        return billing.cheapModel(catalog, new CopilotApi.Operator.Billing.Need(ANY, tools, false, tokens)).map(m -> m.path("id").asText()).orElse(null);
    }

    @Test
    void theCheapModelIsTheLowestPricedThatCanServeTheCallOrAFreeOneOnALegacyPlan() {
        List<JsonNode> usage = List.of(model("big", 1, prices(300, 1500), 200000, true, "/v1/messages"),
            model("mini", 0, prices(25, 200), 128000, true, "/chat/completions"),
            model("nano", 0, prices(10, 40), 16000, false, "/chat/completions"),
            model("embed", 0, prices(1, 0), 8000, false));
        ((ObjectNode) usage.get(3).path("capabilities")).put("type", "embeddings");
        CopilotApi.Operator.Billing auto = new CopilotApi.Operator.Billing(null, null);
        assertEquals("nano", cheap(auto, usage, false, 1000), "the lowest input and output prices");
        assertEquals("mini", cheap(auto, usage, true, 1000), "the call has tools: a model that takes them");
        assertEquals("mini", cheap(auto, usage, false, 50000), "nano's context does not hold the prompt");
        assertEquals("big", cheap(auto, usage, false, 150000));
        assertEquals(null, cheap(auto, usage, false, 500000), "no model holds it: the call keeps its own");
        assertTrue(auto.cheapModel(usage, new CopilotApi.Operator.Billing.Need(List.of("/responses"), false, false, 10)).isEmpty(), "no model on the endpoint");
        List<JsonNode> legacy = List.of(model("big", 1, null, 200000, true), model("haiku", 0.33, null, 200000, true),
            model("free-a", 0, null, 64000, true), model("free-b", 0, null, 128000, true));
        assertEquals("free-a", cheap(auto, legacy, true, 1000), "legacy: a free model (the catalog's first that serves)");
        assertEquals("free-b", cheap(auto, legacy, true, 100000));
        assertEquals(null, cheap(auto, legacy, true, 150000), "no free model holds it");
        assertEquals("haiku", cheap(new CopilotApi.Operator.Billing(null, "haiku"), legacy, true, 1000), "--small-model overrides");
        assertEquals("big", cheap(new CopilotApi.Operator.Billing(null, "big"), usage, true, 1000), "--small-model overrides the prices too");
        assertEquals(null, cheap(new CopilotApi.Operator.Billing(null, "off"), usage, false, 10), "--small-model off: nothing is rerouted");
    }

    // ==== 3. Through the server, on each route, on both kinds of plan ====

    /** A background request of this kind in the API's shape, asking for an expensive model. */
    static String request(String api, String kind, boolean stream) {
        String system = kind.equals("title") ? TITLE_SYSTEM : "You are a coding agent.";
        String last = switch (kind) {
            case "title" -> "<session>\nFix the login bug\n</session>";
            case "side call" -> REMINDER;
            default -> api.equals("anthropic") ? CLAUDE_COMPACT : CODEX_COMPACT;
        };
        String first = kind.equals("compaction") ? "Fix the login bug" : "";
        return switch (api) {
            case "anthropic" -> {
                ObjectNode b = (ObjectNode) (first.isEmpty() ? anthropic(system, last) : anthropic(system, first, last));
                yield b.put("stream", stream).toString();
            }
            case "chat" -> {
                ObjectNode b = json("{\"model\":\"claude-sonnet-4.5\"}").deepCopy();
                var messages = b.putArray("messages");
                messages.addObject().put("role", "system").put("content", system);
                if (!first.isEmpty()) {
                    messages.addObject().put("role", "user").put("content", first);
                    messages.addObject().put("role", "assistant").put("content", "Done.");
                }
                messages.addObject().put("role", "user").put("content", last);
                yield b.put("stream", stream).toString();
            }
            default -> {
                ObjectNode b = json("{\"model\":\"gpt-5.1-codex\"}").deepCopy();
                b.put("instructions", system);
                var input = b.putArray("input");
                if (!first.isEmpty()) {
                    input.addObject().put("type", "message").put("role", "user").put("content", first);
                    input.addObject().put("type", "message").put("role", "assistant").putArray("content").addObject()
                        .put("type", "output_text").put("text", "Done.");
                }
                input.addObject().put("type", "message").put("role", "user").put("content", last);
                yield b.put("stream", stream).toString();
            }
        };
    }

    static final Map<String, String> PATHS = Map.of("anthropic", "/v1/messages", "chat", "/v1/chat/completions", "responses", "/v1/responses");

    /** The model the last model call reached Copilot with, whichever endpoint it went to. */
    static String upstreamModel(StubUpstream stub) {
        StubUpstream.Recorded last = null;
        for (StubUpstream.Recorded r : stub.requests()) {
            if (r.matches("/v1/messages") || r.matches("/chat/completions") || r.matches("/responses")) last = r;
        }
        return last == null ? null : last.json().path("model").asText();
    }

    static JsonNode stats(CopilotApiTests.Harness h) throws Exception {
        return json(h.get("/stats").body());
    }

    @TestFactory
    Stream<DynamicTest> eachBackgroundKindGoesToTheCheapModelOnEveryRouteAndPlan() {
        List<DynamicTest> tests = new ArrayList<>();
        for (boolean usageBased : List.of(true, false)) {
            for (String api : List.of("anthropic", "chat", "responses")) {
                for (String kind : List.of("title", "compaction", "side call")) {
                    String name = (usageBased ? "usage-based " : "legacy ") + api + " " + kind;
                    tests.add(DynamicTest.dynamicTest(name, () -> {
                        try (CopilotApiTests.Harness h = harness(usageBased ? usageBased() : StubUpstream.start(), null)) {
                            List<String> kept = new ArrayList<>();
                            for (boolean stream : List.of(false, true)) {
                                HttpResponse<String> r = h.post(PATHS.get(api), request(api, kind, stream));
                                assertEquals(200, r.statusCode(), name + ": " + r.body());
                                // usage-based: the lowest prices; legacy: the catalog's first free chat model
                                assertEquals(usageBased ? "gpt-5-mini" : "gpt-4.1", upstreamModel(h.stub), name + (stream ? " streamed" : ""));
                                String asked = api.equals("responses") ? "gpt-5.1-codex" : "claude-sonnet-4.5";
                                assertEquals(Set.of(asked), answeredModels(api, r.body(), stream), name + (stream ? " streamed" : "")
                                    + ": named as asked: " + r.body());
                                if (api.equals("responses") && !stream) kept.add(json(r.body()).path("id").asText());
                            }
                            JsonNode background = stats(h).path("background");
                            assertEquals(2, background.path("calls").asInt(), name + ": " + background);
                            assertEquals(2, background.path("by_kind").path(kind).asInt(), name + ": " + background);
                            if (usageBased) assertTrue(background.path("credits").asDouble() > 0, name + ": " + background);
                            assertEquals(0, stats(h).path("premium").path("units").asDouble(), 0.0001, "no premium request: " + name);
                            JsonNode rows = CostTests.historyRows(h, 2);
                            for (JsonNode row : rows) assertEquals("background", row.path("route").asText(), name + ": " + row);
                            for (String id : kept) {
                                JsonNode stored = json(h.get("/v1/responses/" + id).body());
                                assertEquals("gpt-5.1-codex", stored.path("model").asText(), name + ": kept as answered: " + stored);
                            }
                        }
                    }));
                }
            }
        }
        return tests.stream();
    }

    /**
     * The model names a client reads in an answer: the whole answer's, or every one a stream's events carry (each chat
     * chunk, Anthropic's message_start, each Responses event that carries the response, each Gemini chunk).
     */
    static Set<String> answeredModels(String api, String body, boolean stream) {
        String field = api.equals("gemini") ? "modelVersion" : "model";
        Set<String> names = new TreeSet<>();
        if (!stream) {
            names.add(json(body).path(field).asText());
            return names;
        }
        for (String data : CopilotApiTests.dataLines(body)) {
            if (data.equals("[DONE]")) continue;
            JsonNode e = json(data);
            if (api.equals("anthropic") && e.path("type").asText().equals("message_start")) names.add(e.path("message").path(field).asText());
            else if (api.equals("responses") && e.path("response").isObject()) names.add(e.path("response").path(field).asText());
            else if (api.equals("chat") || api.equals("gemini")) names.add(e.path(field).asText());
        }
        return names;
    }

    /**
     * Gemini CLI's side calls (never streamed) go where every background call goes, and the answer names the model asked
     * for, as on the other routes: the client asked for it, and the log and /history say which model served.
     */
    @Test
    void aGeminiSideCallGoesToTheCheapModelAndIsNamedAsAsked() throws Exception {
        for (boolean usageBased : List.of(true, false)) {
            try (CopilotApiTests.Harness h = harness(usageBased ? usageBased() : StubUpstream.start(), null)) {
                String check = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"Is the last message a question?\"}]}]}";
                HttpResponse<String> r = h.send("POST", "/v1beta/models/gemini-2.5-pro:generateContent", check,
                    "user-agent", "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)");
                assertEquals(200, r.statusCode(), r.body());
                assertEquals(usageBased ? "gpt-5-mini" : "gpt-4.1", upstreamModel(h.stub));
                assertEquals(Set.of("gemini-2.5-pro"), answeredModels("gemini", r.body(), false), r.body());
                assertEquals(1, stats(h).path("background").path("by_kind").path("side call").asInt(), stats(h).toString());
            }
        }
    }

    @Test
    void aPersonsPromptIsNotReroutedAndBillsAsOne() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start(), null)) {
            String typed = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":"
                + "[{\"type\":\"text\",\"text\":\"Warmup\"}]}]}";
            assertEquals(200, h.post("/v1/messages", typed).statusCode());
            assertEquals("claude-sonnet-4.5", upstreamModel(h.stub));
            assertEquals("user", h.stub.last("/v1/messages").header("x-initiator"));
            String asked = "{\"model\":\"claude-sonnet-4.5\",\"messages\":[{\"role\":\"system\",\"content\":\"You are a coding agent.\"},"
                + "{\"role\":\"user\",\"content\":\"Give this session a title\"}]}";
            assertEquals(200, h.post("/v1/chat/completions", asked).statusCode());
            assertEquals("claude-sonnet-4.5", upstreamModel(h.stub));
            assertEquals(0, stats(h).path("background").path("calls").asInt(), stats(h).toString());
            assertEquals(2, stats(h).path("premium").path("units").asDouble(), 0.0001);
        }
    }

    @Test
    void theSmallModelOptionChoosesTheModelOrTurnsTheRerouteOff() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased(), "gpt-4o")) {
            assertEquals(200, h.post("/v1/messages", request("anthropic", "title", false)).statusCode());
            assertEquals("gpt-4o", upstreamModel(h.stub), "the operator's choice, not the cheapest");
        }
        try (CopilotApiTests.Harness h = harness(usageBased(), "off")) {
            assertEquals(200, h.post("/v1/messages", request("anthropic", "title", false)).statusCode());
            assertEquals("claude-sonnet-4.5", upstreamModel(h.stub), "off: the model asked for");
            assertEquals(1, stats(h).path("background").path("calls").asInt(), "still counted as background");
        }
    }

    /** A --small-model the catalog does not have is said at start; background calls then keep their model, the log line says why. */
    @Test
    void aSmallModelNotInTheCatalogIsSaidAtStartAndInTheLogLine() throws Exception {
        try (StubUpstream stub = StubUpstream.start()) {
            Map<String, String> env = CopilotApiTests.CliTests.env(stub, java.nio.file.Files.createTempDirectory("h"));
            try (CopilotApiTests.CliTests.Started server = new CopilotApiTests.CliTests.Started(env, "--small-model", "gpt-nope")) {
                String warning = server.lineWith("warning: --small-model gpt-nope is not a chat model in Copilot's catalog");
                assertTrue(warning != null && warning.contains("gpt-4.1"), server.log.toString());
                HttpResponse<String> r = java.net.http.HttpClient.newHttpClient().send(java.net.http.HttpRequest.newBuilder(
                    java.net.URI.create(server.baseUrl() + "/v1/messages")).header("content-type", "application/json")
                    .POST(java.net.http.HttpRequest.BodyPublishers.ofString(request("anthropic", "title", false))).build(),
                    HttpResponse.BodyHandlers.ofString());
                assertEquals(200, r.statusCode(), r.body());
                assertEquals("claude-sonnet-4.5", upstreamModel(stub));
                String line = server.lineWith("[native, background: title]");
                assertTrue(line != null && line.contains("(kept on the model asked for: --small-model gpt-nope cannot serve it"), server.log.toString());
            }
        }
    }

    /** A compaction bigger than any free model's context stays on the model asked for, and the log line says why. */
    @Test
    void aCompactionNoCheapModelCanHoldStaysOnItsModel() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start(), null)) {
            String history = "x ".repeat(220_000);
            String body = ((ObjectNode) anthropic("You are a coding agent.", history, CLAUDE_COMPACT)).toString();
            HttpResponse<String> r = h.post("/v1/messages", body);
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("claude-sonnet-4.5", upstreamModel(h.stub), "no free model's context holds the conversation");
            JsonNode row = CostTests.historyRows(h, 1).get(0);
            assertEquals("background", row.path("route").asText(), row.toString());
            assertEquals(1, stats(h).path("background").path("calls").asInt());
        }
    }

    @Test
    void theDashboardCountsBackgroundCallsAndTheirCreditsApart() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased(), null)) {
            assertEquals(200, h.post("/v1/messages", BillingTests.warmup("claude-opus-4.1")).statusCode());
            assertEquals(200, h.post("/v1/messages", request("anthropic", "title", false)).statusCode());
            String dom = CopilotApiTests.DashboardTests.render(h.url("/dashboard"));
            assertTrue(dom.matches("(?s).*Background calls no person typed, sent to the cheap model: <b>2</b> \\(title 1 · warmup 1\\) · [0-9.]+ credits.*"), dom);
        }
    }

    /** The Warmup probe is one background kind among the others: counted apart, named as asked. */
    @Test
    void theWarmupProbeIsCountedAsBackground() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased(), null)) {
            HttpResponse<String> r = h.post("/v1/messages", BillingTests.warmup("claude-opus-4.1"));
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("gpt-5-mini", upstreamModel(h.stub));
            assertEquals("claude-opus-4.1", json(r.body()).path("model").asText());
            assertEquals(1, stats(h).path("background").path("by_kind").path("warmup").asInt(), stats(h).toString());
        }
    }
}
