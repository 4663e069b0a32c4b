package copilotapi;

import static copilotapi.CopilotApiTests.json;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * Copilot since mid-2026 (WIRE.md, "Copilot since mid-2026"), against a stub that speaks it (account kind
 * usage-based) and, where the old behaviour matters, one that does not (legacy): the catalog's identity, the
 * initiators Copilot accepts, the session and weekly limits, and the early warning at start and in `debug --probe`.
 */
class UsageBasedTests {

    static CopilotApiTests.Harness harness(StubUpstream stub) throws IOException {
        return new CopilotApiTests.Harness(stub, new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE, CopilotApi.Operator.Pacer.NONE,
            CopilotApi.Operator.Approver.NONE, new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(null, null)));
    }

    static StubUpstream usageBased() throws IOException {
        return StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED);
    }

    static JsonNode model(JsonNode list, String id) {
        for (JsonNode m : list.path("data")) {
            if (m.path("id").asText().equals(id)) return m;
        }
        return null;
    }

    // ==== 1. Catalog identity ====

    @Test
    void aLegacyAccountIsAskedForTheCatalogWithTheModelAccessIdentity() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start())) {
            StubUpstream.Recorded asked = h.stub.last("/models");
            assertEquals("model-access", asked.header("openai-intent"));
            assertEquals("model-access", asked.header("x-interaction-type"));
            assertEquals(null, asked.header("content-type"), "no content type on the catalog GET");
            HttpResponse<String> r = h.get("/v1/models");
            assertEquals(200, r.statusCode(), r.body());
            assertNotNull(model(json(r.body()), "claude-sonnet-4.5"), r.body());
        }
    }

    @Test
    void aUsageBasedAccountGetsItsCatalogAndItsNewFieldsAreShown() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            assertEquals(1, h.stub.count("/models"), "the model-access identity was enough");
            HttpResponse<String> r = h.get("/v1/models");
            assertEquals(200, r.statusCode(), r.body());
            JsonNode sonnet = model(json(r.body()), "claude-sonnet-4.5");
            assertNotNull(sonnet, r.body());
            assertEquals(300, sonnet.path("token_prices").path("input_price").asDouble(), 0.001, sonnet.toString());
            assertEquals(30, sonnet.path("token_prices").path("cache_price").asDouble(), 0.001);
            assertEquals(600, sonnet.path("token_prices").path("long_context").path("input_price").asDouble(), 0.001);
            assertFalse(sonnet.path("web_search").asBoolean(true));
            assertTrue(sonnet.path("reasoning_efforts").toString().contains("\"xhigh\"") && sonnet.path("reasoning_efforts").toString().contains("\"max\""),
                sonnet.toString());
            assertEquals(1000000, sonnet.path("long_context_limits").path("max_context_window_tokens").asInt(), sonnet.toString());
            assertTrue(model(json(r.body()), "gpt-4.1").path("web_search").asBoolean(), r.body());
            assertEquals(200, h.post("/v1/chat/completions", "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}").statusCode());
        }
    }

    @Test
    void whenTheModelAccessIdentityGetsTheNoticeTheGitHubTokenReadsTheCatalog() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased().modelAccessGetsNotice(true))) {
            List<StubUpstream.Recorded> asked = h.stub.requests().stream().filter(r -> r.matches("/models")).toList();
            assertEquals(2, asked.size(), asked.toString());
            assertEquals("Bearer " + StubUpstream.VALID_GITHUB_TOKEN, asked.get(1).header("authorization"), "the GitHub token as bearer");
            assertEquals("copilot-developer-cli", asked.get(1).header("copilot-integration-id"));
            assertEquals("model-access", asked.get(1).header("openai-intent"));
            HttpResponse<String> r = h.get("/v1/models");
            assertEquals(200, r.statusCode(), r.body());
            assertNotNull(model(json(r.body()), "claude-sonnet-4.5"), r.body());
        }
    }

    /** Both identities answered the notice: an error naming both, no token in it; the next read works. */
    @Test
    void whenNoIdentityGetsTheCatalogTheErrorSaysWhatWasTried() throws Exception {
        StubUpstream stub = usageBased();
        String notice = CopilotApi.JSON.writeValueAsString(StubUpstream.BILLING_NOTICE);
        for (int i = 0; i < 4; i++) stub.enqueue("/models", StubUpstream.Reply.json(200, notice));
        try (CopilotApiTests.Harness h = harness(stub)) {
            HttpResponse<String> r = h.get("/v1/models");
            assertEquals(502, r.statusCode(), r.body());
            String message = json(r.body()).path("error").path("message").asText();
            assertTrue(message.contains("model-access identity: the notice \"Your billing plan has changed"), message);
            assertTrue(message.contains("GitHub token as copilot-developer-cli: the notice"), message);
            assertFalse(r.body().contains(StubUpstream.VALID_GITHUB_TOKEN), "no token in the error");
            HttpResponse<String> next = h.get("/v1/models");
            assertEquals(200, next.statusCode(), "after the fault the catalog is read: " + next.body());
        }
    }

    // ==== 2. Initiators Copilot accepts ====

    static String chatTool(String name) {
        return "{\"type\":\"function\",\"function\":{\"name\":\"" + name + "\",\"parameters\":{\"type\":\"object\",\"properties\":"
            + "{\"prompt\":{\"type\":\"string\"}}}}}";
    }

    static double units(CopilotApiTests.Harness h) throws Exception {
        return json(h.get("/stats").body()).path("premium").path("units").asDouble();
    }

    static long subagentCalls(CopilotApiTests.Harness h) throws Exception {
        return json(h.get("/stats").body()).path("premium").path("calls_by_reason").path("subagent").asLong();
    }

    /** On chat completions a subagent's first call goes as user at once (billed, said in the ledger): no refused round trip. */
    @Test
    void aSubagentsFirstCallOnChatCompletionsGoesAsUserAtOnce() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            for (boolean stream : List.of(false, true)) {
                String main = "{\"model\":\"claude-sonnet-4.5\",\"tools\":[" + chatTool("Task") + "],\"messages\":[{\"role\":\"user\","
                    + "\"content\":\"Investigate " + StubUpstream.SUBAGENT_MARKER + "\"}]}";
                HttpResponse<String> r = h.post("/v1/chat/completions", main);
                assertEquals(200, r.statusCode(), r.body());
                JsonNode calls = json(r.body()).path("choices").get(0).path("message").path("tool_calls");
                String prompt = json(calls.get(0).path("function").path("arguments").asText()).path("prompt").asText();
                double before = units(h);
                h.stub.clear();
                String sub = "{\"model\":\"claude-sonnet-4.5\",\"stream\":" + stream + ",\"messages\":[{\"role\":\"system\",\"content\":\"You are a subagent.\"},"
                    + "{\"role\":\"user\",\"content\":" + CopilotApi.JSON.writeValueAsString(prompt) + "}]}";
                HttpResponse<String> answered = h.post("/v1/chat/completions", sub);
                assertEquals(200, answered.statusCode(), answered.body());
                assertEquals(1, h.stub.count("/chat/completions"), "no refused round trip");
                assertEquals("user", h.stub.last("/chat/completions").header("x-initiator"));
                assertEquals(1, units(h) - before, 0.001, "billed as the premium request it is");
            }
            assertEquals(2, subagentCalls(h), "the ledger still says they were subagents");
        }
    }

    @Test
    void aSubagentsFirstCallOnResponsesGoesAsUserAtOnce() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            String main = "{\"model\":\"gpt-5.1-codex\",\"tools\":[{\"type\":\"function\",\"name\":\"Agent\",\"parameters\":{\"type\":\"object\","
                + "\"properties\":{\"prompt\":{\"type\":\"string\"}}}}],\"input\":\"Investigate " + StubUpstream.SUBAGENT_MARKER + "\"}";
            HttpResponse<String> r = h.post("/v1/responses", main);
            assertEquals(200, r.statusCode(), r.body());
            String prompt = BillingTests.responsesPrompt(r.body(), false);
            h.stub.clear();
            String sub = "{\"model\":\"gpt-5.1-codex\",\"instructions\":\"You are a subagent.\",\"input\":" + CopilotApi.JSON.writeValueAsString(prompt) + "}";
            HttpResponse<String> answered = h.post("/v1/responses", sub);
            assertEquals(200, answered.statusCode(), answered.body());
            assertEquals(1, h.stub.count("/responses"));
            assertEquals("user", h.stub.last("/responses").header("x-initiator"));
            String followUp = "{\"model\":\"gpt-5.1-codex\",\"input\":[{\"role\":\"user\",\"content\":\"List files\"},{\"type\":\"function_call\","
                + "\"call_id\":\"call_1\",\"name\":\"ls\",\"arguments\":\"{}\"},{\"type\":\"function_call_output\",\"call_id\":\"call_1\",\"output\":\"a.txt\"}]}";
            assertEquals(200, h.post("/v1/responses", followUp).statusCode());
            assertEquals("agent", h.stub.last("/responses").header("x-initiator"), "a tool follow-up stays free");
        }
    }

    /**
     * On /v1/messages agent is tried: the refusal is answered by one resend as user, and remembered, so the second
     * subagent goes as user at once; tool-result turns stay agent. A legacy account keeps the subagent free.
     */
    @Test
    void onMessagesARefusedAgentIsResentOnceAsUserAndRemembered() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            double before = units(h);
            for (int round = 1; round <= 2; round++) {
                String prompt = subagentPrompt(h);
                h.stub.clear();
                HttpResponse<String> r = h.post("/v1/messages", subagent(prompt));
                assertEquals(200, r.statusCode(), r.body());
                assertEquals(round == 1 ? List.of("agent", "user") : List.of("user"), initiators(h, "/v1/messages"), "round " + round);
            }
            assertEquals(4, units(h) - before, 0.001, "two main prompts and two subagents billed");
            h.stub.clear();
            assertEquals(200, h.post("/v1/messages", toolResultTurn()).statusCode());
            assertEquals("agent", h.stub.last("/v1/messages").header("x-initiator"), "tool results stay agent");
        }
        try (CopilotApiTests.Harness legacy = harness(StubUpstream.start())) {
            String prompt = subagentPrompt(legacy);
            legacy.stub.clear();
            assertEquals(200, legacy.post("/v1/messages", subagent(prompt)).statusCode());
            assertEquals(1, legacy.stub.count("/v1/messages"));
            assertEquals("agent", legacy.stub.last("/v1/messages").header("x-initiator"), "a legacy account keeps the subagent free");
        }
    }

    /**
     * A continuation that ends with a user message of reminders (after tool results): Copilot sees a user's text last,
     * so on chat completions it goes as user at once (no refused round trip), while a turn ending with a tool message
     * stays agent. On /v1/messages such a notification is tried as agent until Copilot refuses it once for the model.
     */
    @Test
    void aReminderTurnGoesAsUserWhereCopilotRefusesAgentAndToolTurnsStayAgent() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            String toolTurn = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"List files\"},{\"role\":\"assistant\","
                + "\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"ls\",\"arguments\":\"{}\"}}]},"
                + "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"a.txt\"}]}";
            String withReminder = toolTurn.substring(0, toolTurn.length() - 2)
                + ",{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"<system-reminder>Files changed.</system-reminder>\"}]}]}";
            h.stub.clear();
            assertEquals(200, h.post("/v1/chat/completions", withReminder).statusCode());
            assertEquals(List.of("user"), initiators(h, "/chat/completions"), "a user's text last goes as user at once on chat");
            h.stub.clear();
            assertEquals(200, h.post("/v1/chat/completions", toolTurn).statusCode());
            assertEquals(1, h.stub.count("/chat/completions"));
            assertEquals("agent", h.stub.last("/chat/completions").header("x-initiator"), "a tool message last stays agent");

            String notification = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
                + "{\"role\":\"assistant\",\"content\":\"Working.\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
                + "\"<system-reminder>[SYSTEM NOTIFICATION - NOT USER INPUT] done</system-reminder>\"}]}]}";
            List<List<String>> rounds = new java.util.ArrayList<>();
            for (int round = 0; round < 2; round++) {
                h.stub.clear();
                assertEquals(200, h.post("/v1/messages", notification).statusCode());
                rounds.add(initiators(h, "/v1/messages"));
            }
            assertEquals(List.of(List.of("agent", "user"), List.of("user")), rounds, "refused once, then remembered for the model");
            h.stub.clear();
            assertEquals(200, h.post("/v1/messages", toolResultTurn()).statusCode());
            assertEquals("agent", h.stub.last("/v1/messages").header("x-initiator"), "a tool_result turn stays agent after that");
        }
    }

    /**
     * Claude Code's tool turn on a translated model: tool results followed by reminder-only text. The reminders travel
     * inside the last tool answer, so the turn reaches Copilot ending in a tool message, goes once, as agent, unbilled.
     */
    @Test
    void aClaudeCodeToolTurnWithRemindersStaysAgentOnTheTranslatedRoute() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            String turn = "{\"model\":\"gpt-4.1\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":\"List files\"},"
                + "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Bash\",\"input\":{\"command\":\"ls\"}}]},"
                + "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"a.txt\"},"
                + "{\"type\":\"text\",\"text\":\"<system-reminder>Files changed.</system-reminder>\"}]}]}";
            for (boolean stream : List.of(false, true)) {
                h.stub.clear();
                String body = stream ? turn.replaceFirst("\\{", "{\"stream\":true,") : turn;
                HttpResponse<String> r = h.post("/v1/messages", body);
                assertEquals(200, r.statusCode(), r.body());
                List<StubUpstream.Recorded> calls = h.stub.requests().stream().filter(x -> x.matches("/chat/completions")).toList();
                assertEquals(1, calls.size(), "one call, no resend as user");
                assertEquals("agent", calls.get(0).header("x-initiator"));
                JsonNode last = calls.get(0).json().path("messages").get(calls.get(0).json().path("messages").size() - 1);
                assertEquals("tool", last.path("role").asText(), last.toString());
                assertTrue(last.path("content").asText().contains("Files changed."), "the reminder still reaches the model: " + last);
            }
        }
    }

    /** The X-Initiator of each call Copilot got on this path since the last clear, in order. */
    static List<String> initiators(CopilotApiTests.Harness h, String path) {
        return h.stub.requests().stream().filter(x -> x.matches(path)).map(x -> x.header("x-initiator")).toList();
    }

    static String subagentPrompt(CopilotApiTests.Harness h) throws Exception {
        String main = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":300,\"tools\":[" + BillingTests.tool("Bash") + "," + BillingTests.tool("Agent")
            + "],\"messages\":[{\"role\":\"user\",\"content\":\"Investigate this " + StubUpstream.SUBAGENT_MARKER + "\"}]}";
        HttpResponse<String> r = h.post("/v1/messages", main);
        assertEquals(200, r.statusCode(), r.body());
        return BillingTests.agentPromptFromMessage(json(r.body()));
    }

    static String subagent(String prompt) throws Exception {
        return "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":300,\"system\":\"You are an agent for Claude Code.\",\"tools\":["
            + BillingTests.tool("Bash") + "],\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
            + CopilotApi.JSON.writeValueAsString(prompt) + "}]}]}";
    }

    static String toolResultTurn() {
        return "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},"
            + "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Bash\",\"input\":{}}]},"
            + "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":\"ok\"}]}]}";
    }

    // ==== 3. Limits ====

    static final String MESSAGES_HI = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
    static final String CHAT_HI = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";

    @Test
    void aSessionLimitIsA429WithRetryAfterInAnthropicsShapeAndNotRetried() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            h.stub.enqueue("/v1/messages", StubUpstream.usageLimit("session", 2733));
            HttpResponse<String> r = h.post("/v1/messages", MESSAGES_HI);
            assertEquals(429, r.statusCode(), r.body());
            assertEquals("2733", r.headers().firstValue("retry-after").orElse(null), "the wait from Copilot's text");
            JsonNode body = json(r.body());
            assertEquals("error", body.path("type").asText());
            assertEquals("rate_limit_error", body.path("error").path("type").asText());
            assertTrue(body.path("error").path("message").asText().contains("exceeded your 5 hour session limits. Please retry after 2733 seconds"),
                r.body());
            assertEquals(1, h.stub.count("/v1/messages"), "never retried automatically");
            assertEquals(200, h.post("/v1/messages", MESSAGES_HI).statusCode(), "the next request is served");
        }
    }

    @Test
    void aWeeklyLimitIsA429WithRetryAfterInOpenAisShape() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            h.stub.enqueue("/chat/completions", StubUpstream.usageLimit("weekly", 86000));
            HttpResponse<String> r = h.post("/v1/chat/completions", CHAT_HI);
            assertEquals(429, r.statusCode(), r.body());
            assertEquals("86000", r.headers().firstValue("retry-after").orElse(null));
            assertEquals("rate_limit_error", json(r.body()).path("error").path("type").asText(), r.body());
            assertTrue(json(r.body()).path("error").path("message").asText().contains("weekly rate limits"), r.body());
            assertEquals(1, h.stub.count("/chat/completions"));
            h.stub.enqueue("/chat/completions", StubUpstream.usageLimit("session", 60).header("retry-after", "75"));
            assertEquals("75", h.post("/v1/chat/completions", CHAT_HI).headers().firstValue("retry-after").orElse(null),
                "Copilot's header wins over its text");
            assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
        }
    }

    /** The limit headers of Copilot's answers reach /usage, and `check-usage` (text and --json) through the data directory. */
    @Test
    void theLimitHeadersAreShownInUsageAndCheckUsage() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
            JsonNode usage = json(h.get("/usage").body());
            assertTrue(usage.path("token_based_billing").asBoolean(), "GitHub's report as it is: " + usage);
            JsonNode limits = usage.path("copilot_api_limits");
            assertEquals(12, limits.path("rate_limits").path("session").path("percent_used").asDouble(), 0.001, limits.toString());
            assertEquals(3, limits.path("rate_limits").path("weekly").path("percent_used").asDouble(), 0.001, limits.toString());
            assertTrue(limits.path("rate_limits").path("session").path("resets_at").asText().endsWith("Z"), limits.toString());
            assertEquals(40, limits.path("quota_snapshots").path("premium_interactions").path("percent_used").asDouble(), 0.001);
            assertTrue(limits.path("quota_snapshots").path("chat").path("unlimited").asBoolean(), limits.toString());

            Map<String, String> env = CopilotApiTests.CliTests.env(h.stub, h.home);
            env.put("GH_TOKEN", StubUpstream.VALID_GITHUB_TOKEN);
            CopilotApiTests.CliTests.Run text = CopilotApiTests.CliTests.cli(env, "check-usage");
            assertEquals(0, text.exit(), text.err());
            assertTrue(text.out().matches("(?s).*Session limit:\\s+12% used, resets 20.*"), text.out());
            assertTrue(text.out().matches("(?s).*Weekly limit:\\s+3% used.*"), text.out());
            assertTrue(text.out().contains("(usage-based billing)"), text.out());
            CopilotApiTests.CliTests.Run asJson = CopilotApiTests.CliTests.cli(env, "check-usage", "--json");
            assertEquals(0, asJson.exit(), asJson.err());
            assertEquals(12, json(asJson.out()).path("copilot_api_limits").path("rate_limits").path("session").path("percent_used").asDouble(), 0.001);
        }
    }

    @Test
    void theDashboardShowsTheSessionAndWeeklyLimits() throws Exception {
        try (CopilotApiTests.Harness h = harness(usageBased())) {
            assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
            String dom = CopilotApiTests.DashboardTests.render(h.url("/dashboard"));
            assertTrue(dom.contains("<b>Session limit</b><span>12.0% used · resets "), dom);
            assertTrue(dom.contains("<b>Weekly limit</b><span>3.0% used · resets "), dom);
        }
    }

    // ==== 9. Early warning: the start log and debug --probe ====

    /**
     * copilot-api as its own process: the start says which identity read the catalog; a window past 80% and 95% is
     * a warning each; a restart names the models that appeared and went away.
     */
    @Test
    void theStartLogSaysWhichIdentityWorkedWarnsOfLimitsAndNamesModelChanges() throws Exception {
        try (StubUpstream stub = usageBased().modelAccessGetsNotice(true)) {
            Path home = Files.createTempDirectory("copilot-api-home");
            Map<String, String> env = CopilotApiTests.CliTests.env(stub, home);
            try (CopilotApiTests.CliTests.Started server = new CopilotApiTests.CliTests.Started(env)) {
                String line = logLine(server, "model catalog read with the");
                assertTrue(line.contains("GitHub token as copilot-developer-cli") && line.contains("the notice"), line);
                String base = server.baseUrl();
                stub.answerHeader("x-usage-ratelimit-session", StubUpstream.quotaHeader(100, 15, "2026-12-03T12:00:00Z"));
                post(base, CHAT_HI);
                logLine(server, "session limit is 85% used (over 80%)");
                stub.answerHeader("x-usage-ratelimit-session", StubUpstream.quotaHeader(100, 3, "2026-12-03T12:00:00Z"));
                post(base, CHAT_HI);
                logLine(server, "session limit is 97% used (over 95%)");
                assertFalse(server.log.toString().contains(StubUpstream.VALID_GITHUB_TOKEN), "no token in the log");
            }
            synchronized (stub.models()) {
                ArrayNode models = stub.models();
                for (int i = 0; i < models.size(); i++) {
                    if (models.get(i).path("id").asText().equals("gpt-4o")) models.remove(i);
                }
                ObjectNode fable = models.get(0).deepCopy();
                fable.put("id", "claude-fable-5");
                models.add(fable);
            }
            try (CopilotApiTests.CliTests.Started again = new CopilotApiTests.CliTests.Started(env)) {
                logLine(again, "models new since the last start: claude-fable-5");
                logLine(again, "models gone since the last start: gpt-4o");
            }
        }
    }

    /** The first line of the process's output that contains the text, waiting at most 30 s for it. */
    static String logLine(CopilotApiTests.CliTests.Started process, String text) throws InterruptedException {
        String log = CopilotApiTests.eventually(java.time.Duration.ofSeconds(30), () -> process.log.toString(), l -> l.contains(text));
        int at = log.indexOf(text);
        assertTrue(at >= 0, "no line with '" + text + "' in:\n" + log);
        return log.substring(log.lastIndexOf('\n', at) + 1, log.indexOf('\n', at) < 0 ? log.length() : log.indexOf('\n', at));
    }

    static void post(String base, String body) throws Exception {
        java.net.http.HttpClient client = java.net.http.HttpClient.newHttpClient();
        HttpResponse<String> r = client.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create(base + "/v1/chat/completions"))
            .header("content-type", "application/json").POST(java.net.http.HttpRequest.BodyPublishers.ofString(body)).build(),
            HttpResponse.BodyHandlers.ofString());
        assertEquals(200, r.statusCode(), r.body());
    }

    @Test
    void debugProbeSaysWhichIdentityWorkedAndWhetherTheVersionsAreRefused() throws Exception {
        try (StubUpstream stub = usageBased().modelAccessGetsNotice(true)) {
            Path home = Files.createTempDirectory("copilot-api-home");
            Map<String, String> env = CopilotApiTests.CliTests.env(stub, home);
            env.put("COPILOT_API_GITHUB_TOKEN", StubUpstream.VALID_GITHUB_TOKEN);
            CopilotApiTests.CliTests.Run ok = CopilotApiTests.CliTests.cli(env, "debug", "--probe", "--json");
            assertEquals(0, ok.exit(), ok.err());
            JsonNode probe = json(ok.out()).path("probe");
            assertEquals("GitHub token as copilot-developer-cli", probe.path("catalogIdentity").asText(), probe.toString());
            assertTrue(probe.path("catalogTried").get(0).asText().startsWith("model-access identity: the notice"), probe.toString());
            assertEquals("accepted", probe.path("editorVersions").asText());
            assertEquals(stub.models().size(), probe.path("models").asInt());
            assertFalse(Files.exists(home.resolve("models-seen.txt")), "a probe leaves the list of the last start alone");
            assertFalse((ok.out() + ok.err()).contains(StubUpstream.VALID_GITHUB_TOKEN), "no token printed");
            stub.refuseEditorVersion("vscode/1.120.0");
            CopilotApiTests.CliTests.Run refused = CopilotApiTests.CliTests.cli(env, "debug", "--probe", "--json");
            assertEquals(0, refused.exit(), refused.err());
            JsonNode said = json(refused.out()).path("probe");
            assertEquals("refused (466)", said.path("editorVersions").asText(), said.toString());
            assertTrue(said.path("error").asText().contains("COPILOT_API_COPILOT_CHAT_VERSION"), said.toString());
        }
    }
}
