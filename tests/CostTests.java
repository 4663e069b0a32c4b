package copilotapi;

import static copilotapi.CopilotApiTests.eventually;
import static copilotapi.CopilotApiTests.json;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.io.InputStream;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import org.junit.jupiter.api.Test;

/**
 * What a request costs (WIRE.md, "Copilot since mid-2026"): AI Credits on a usage-based account, Copilot's own figure
 * (copilot_usage) where an answer carries it, else an estimate from the catalog's token prices; premium units on a
 * legacy account; nothing for a failed or refused call; shown in the x-copilot-api-cost header, /stats and /history,
 * and held to --budget.
 */
class CostTests {
    static final String CHAT = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
    static final String MESSAGES = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
    static final String RESPONSES = "{\"model\":\"gpt-4.1\",\"input\":\"Hi\"}";

    static CopilotApiTests.Harness harness(StubUpstream stub, CopilotApi.Operator.Stats stats) throws IOException {
        return new CopilotApiTests.Harness(stub, new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE, CopilotApi.Operator.Pacer.NONE,
            CopilotApi.Operator.Approver.NONE, stats, new CopilotApi.Operator.Billing(null, null)));
    }

    static CopilotApiTests.Harness usageBased() throws IOException {
        return harness(StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED), new CopilotApi.Operator.Stats());
    }

    static JsonNode credits(CopilotApiTests.Harness h, int requests) throws InterruptedException {
        return eventually(Duration.ofSeconds(10), () -> stats(h), s -> s.path("totals").path("requests").asLong() >= requests).path("credits");
    }

    static JsonNode stats(CopilotApiTests.Harness h) {
        try {
            return json(h.get("/stats").body());
        } catch (Exception e) {
            throw new AssertionError(e);
        }
    }

    /** copilot_usage.total_nano_aiu in credits. */
    static double reported(JsonNode holder) {
        return holder.path("copilot_usage").path("total_nano_aiu").asLong() / 1e9;
    }

    @Test
    void aChatAnswerIsSettledWithCopilotsFigureInTheHeaderAndStats() throws Exception {
        try (CopilotApiTests.Harness h = usageBased()) {
            HttpResponse<String> r = h.post("/v1/chat/completions", CHAT);
            assertEquals(200, r.statusCode(), r.body());
            double real = reported(json(r.body()));
            assertTrue(real > 0, r.body());
            String header = r.headers().firstValue("x-copilot-api-cost").orElseThrow(() -> new AssertionError("no cost header"));
            assertEquals(real, Double.parseDouble(header), real * 0.001, header);
            JsonNode credits = credits(h, 1);
            assertEquals(real, credits.path("by_model").path("gpt-4.1").asDouble(), 1e-12, credits.toString());
            assertEquals(real, credits.path("today").asDouble(), 1e-12);
            assertEquals(real, credits.path("this_month").asDouble(), 1e-12);
            assertEquals(1, credits.path("reported_requests").asLong());
            assertEquals(0, credits.path("estimated_requests").asLong());
            assertEquals(real, credits.path("most_expensive").get(0).path("credits").asDouble(), 1e-12);
        }
    }

    @Test
    void onEveryRouteANonStreamedAnswerCarriesItsCost() throws Exception {
        try (CopilotApiTests.Harness h = usageBased()) {
            for (String[] call : new String[][] {{"/v1/messages", MESSAGES}, {"/v1/responses", RESPONSES},
                {"/v1/messages", MESSAGES.replace("claude-sonnet-4.5", "gpt-4.1")}}) {
                HttpResponse<String> r = h.post(call[0], call[1]);
                assertEquals(200, r.statusCode(), r.body());
                assertTrue(Double.parseDouble(r.headers().firstValue("x-copilot-api-cost").orElse("0")) > 0, call[0] + " " + call[1]);
            }
        }
    }

    /** Without copilot_usage: uncached input at input_price, cached at cache_price, output at output_price, per batch_size tokens. */
    @Test
    void withoutCopilotsFigureTheCostIsEstimatedFromTheTokenPricesAndMarked() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED)
                .reportsCopilotUsage(false).cachedTokens(4), new CopilotApi.Operator.Stats())) {
            HttpResponse<String> r = h.post("/v1/chat/completions", CHAT);
            assertEquals(200, r.statusCode(), r.body());
            JsonNode usage = json(r.body()).path("usage");
            long in = usage.path("prompt_tokens").asLong(), cached = usage.path("prompt_tokens_details").path("cached_tokens").asLong();
            long out = usage.path("completion_tokens").asLong();
            assertEquals(4, cached, "the cached count reaches the client: " + usage);
            double expected = ((in - cached) * 125 + cached * 12.5 + out * 1000) / 1_000_000;
            assertEquals(expected, Double.parseDouble(r.headers().firstValue("x-copilot-api-cost").orElseThrow()), expected * 0.001);
            JsonNode credits = credits(h, 1);
            assertEquals(expected, credits.path("credits").asDouble(), 1e-12, credits.toString());
            assertEquals(1, credits.path("estimated_requests").asLong());
        }
    }

    @Test
    void aStreamsCostIsSettledFromItsLastChunkAndHasNoHeader() throws Exception {
        try (CopilotApiTests.Harness h = usageBased()) {
            HttpResponse<InputStream> r = h.postStreaming("/v1/chat/completions", CHAT.replace("{\"model\"", "{\"stream\":true,\"model\""));
            String body;
            try (InputStream in = r.body()) {
                body = new String(in.readAllBytes(), StandardCharsets.UTF_8);
            }
            assertEquals(200, r.statusCode(), body);
            assertFalse(r.headers().firstValue("x-copilot-api-cost").isPresent(), "a stream's headers leave before its cost is known");
            JsonNode credits = credits(h, 1);
            assertTrue(credits.path("credits").asDouble() > 0, credits.toString());
            assertEquals(1, credits.path("reported_requests").asLong(), "the figure inside the last chunk's usage: " + credits);
        }
    }

    @Test
    void aFailedCallCostsNothingAndTheNextOneIsServed() throws Exception {
        try (CopilotApiTests.Harness h = usageBased()) {
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(500, "{\"error\":{\"message\":\"boom\"}}"));
            HttpResponse<String> failed = h.post("/v1/chat/completions", CHAT);
            assertTrue(failed.statusCode() >= 500, failed.body());
            assertFalse(failed.headers().firstValue("x-copilot-api-cost").isPresent());
            assertEquals(0.0, credits(h, 1).path("credits").asDouble(), "a failed call costs nothing");
            HttpResponse<String> next = h.post("/v1/chat/completions", CHAT);
            assertEquals(200, next.statusCode(), next.body());
            assertEquals(reported(json(next.body())), credits(h, 2).path("credits").asDouble(), 1e-12);
        }
    }

    @Test
    void aLegacyAccountShowsPremiumUnitsAndNoCredits() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start(), new CopilotApi.Operator.Stats())) {
            HttpResponse<String> r = h.post("/v1/messages", MESSAGES);
            assertEquals(200, r.statusCode(), r.body());
            assertFalse(r.headers().firstValue("x-copilot-api-cost").isPresent(), "no credits on a legacy plan");
            JsonNode s = eventually(Duration.ofSeconds(10), () -> stats(h), j -> j.path("totals").path("requests").asLong() >= 1);
            assertEquals(0.0, s.path("credits").path("credits").asDouble());
            assertEquals(1.0, s.path("premium").path("units").asDouble(), s.toString());
        }
    }

    /** A budget smaller than one call: the first passes, the next is a 429 in the caller's shape, Copilot is not called. */
    @Test
    void aCreditBudgetRefusesTheNextCallInTheCallersShapeWithSpentAndReset() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED),
                new CopilotApi.Operator.Stats(CopilotApi.Operator.Cost.Budget.parse("0.0001/day")))) {
            assertEquals(200, h.post("/v1/messages", MESSAGES).statusCode());
            credits(h, 1);
            HttpResponse<String> refused = h.post("/v1/messages", MESSAGES);
            assertEquals(429, refused.statusCode(), refused.body());
            JsonNode body = json(refused.body());
            assertEquals("error", body.path("type").asText(), "Anthropic's error shape: " + refused.body());
            String message = body.path("error").path("message").asText();
            assertTrue(message.contains("--budget 0.0001/day") && message.contains("resets at"), message);
            assertTrue(refused.headers().firstValue("retry-after").isPresent(), "the wait until the reset");
            HttpResponse<String> chat = h.post("/v1/chat/completions", CHAT);
            assertEquals(429, chat.statusCode());
            assertEquals("budget_exceeded", json(chat.body()).path("error").path("code").asText(), "OpenAI's error shape: " + chat.body());
            assertEquals(1, h.stub.count("/v1/messages"), "Copilot was not called for the refused requests");
            assertEquals(0, h.stub.count("/chat/completions"));
            JsonNode budget = stats(h).path("credits").path("budget");
            assertEquals("day", budget.path("per").asText(), budget.toString());
            assertTrue(budget.path("spent").asDouble() > 0.0001, budget.toString());
        }
    }

    static JsonNode historyRows(CopilotApiTests.Harness h, int n) throws InterruptedException {
        return eventually(Duration.ofSeconds(10), () -> StoreTests.history(h, ""), j -> j.path("data").size() >= n).path("data");
    }

    @Test
    void theHistorySaysWhatEachRequestCostAndSumsItPerModelAndDay() throws Exception {
        try (CopilotApiTests.Harness h = usageBased()) {
            HttpResponse<String> r = h.post("/v1/chat/completions", CHAT);
            assertEquals(200, r.statusCode(), r.body());
            double real = reported(json(r.body()));
            JsonNode row = historyRows(h, 1).get(0);
            assertEquals(real, row.path("credits").asDouble(), 1e-12, row.toString());
            assertFalse(row.path("credits_estimated").asBoolean(), row.toString());
            JsonNode summary = json(h.get("/history/summary").body());
            assertEquals(real, summary.path("per_day").get(0).path("credits").asDouble(), 1e-12, summary.toString());
            assertEquals(real, summary.path("per_model").get(0).path("credits").asDouble(), 1e-12, summary.toString());
        }
    }

    @Test
    void aLegacyRequestsHistoryRowHasNoCreditsButItsPremiumCost() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start(), new CopilotApi.Operator.Stats())) {
            assertEquals(200, h.post("/v1/messages", MESSAGES).statusCode());
            JsonNode row = historyRows(h, 1).get(0);
            assertTrue(row.path("credits").isNull(), row.toString());
            assertEquals(1.0, row.path("premium_cost").asDouble(), row.toString());
        }
    }

    /** A store written before credits existed (schema version 1, with a row) opens, keeps its row and gains the columns. */
    @Test
    void aStoreFromBeforeCreditsIsMigratedAndKeepsItsRows() throws Exception {
        java.nio.file.Path dir = java.nio.file.Files.createTempDirectory("copilot-api-old-store");
        java.nio.file.Path file = dir.resolve("old.db");
        try (java.sql.Connection c = java.sql.DriverManager.getConnection("jdbc:sqlite:" + file); java.sql.Statement s = c.createStatement()) {
            for (String sql : CopilotApi.Store.Db.MIGRATIONS.get(0)) s.execute(sql);
            s.execute("PRAGMA user_version = 1");
            s.execute("INSERT INTO history (at, api, method, path, requested_model, upstream_model, status, total_ms, premium_cost)"
                + " VALUES (" + System.currentTimeMillis() + ", 'openai.chat', 'POST', '/v1/chat/completions', 'old', 'old', 200, 5, 1.0)");
        }
        var options = new CopilotApi.Store.Options(true, java.util.Optional.of(file), Duration.ofDays(30), 1 << 30, false);
        try (CopilotApiTests.Harness h = new CopilotApiTests.Harness(StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED),
                java.util.Map.of(), o -> { }, new CopilotApi.Operator.Controls(CopilotApi.Operator.ApiKeys.NONE, CopilotApi.Operator.Pacer.NONE, CopilotApi.Operator.Approver.NONE,
                    new CopilotApi.Operator.Stats(), new CopilotApi.Operator.Billing(null, null)), CopilotApi.Serving.BrowserGuard.loopback("127.0.0.1"),
                CopilotApi.Timeouts.DEFAULT, options)) {
            assertEquals(200, h.post("/v1/chat/completions", CHAT).statusCode());
            JsonNode rows = historyRows(h, 2);
            assertTrue(rows.get(0).path("credits").asDouble() > 0, rows.toString());
            assertEquals("old", rows.get(1).path("requested_model").asText(), rows.toString());
            assertTrue(rows.get(1).path("credits").isNull(), rows.toString());
        }
        try (java.sql.Connection c = java.sql.DriverManager.getConnection("jdbc:sqlite:" + file); java.sql.Statement s = c.createStatement();
             java.sql.ResultSet r = s.executeQuery("PRAGMA user_version")) {
            assertEquals(CopilotApi.Store.Db.MIGRATIONS.size(), r.getInt(1));
        }
    }

    @Test
    void checkUsageAndUsageSayTheBillingKindCreditsUsedAndLeftAndTheReset() throws Exception {
        try (CopilotApiTests.Harness h = usageBased()) {
            HttpResponse<String> r = h.post("/v1/chat/completions", CHAT);
            double real = reported(json(r.body()));
            historyRows(h, 1);
            JsonNode account = json(h.get("/usage").body()).path("copilot_api_credits");
            assertEquals("usage-based", account.path("billing").asText(), account.toString());
            assertEquals(real, account.path("used_through_copilot_api").asDouble(), 1e-12, account.toString());
            assertEquals(3900 - real, account.path("left").asDouble(), 1e-9, "Pro+ includes 3900 credits: " + account);
            java.util.Map<String, String> env = CopilotApiTests.CliTests.env(h.stub, h.home);
            env.put("GH_TOKEN", StubUpstream.VALID_GITHUB_TOKEN);
            CopilotApiTests.CliTests.Run text = CopilotApiTests.CliTests.cli(env, "check-usage");
            assertEquals(0, text.exit(), text.err());
            assertTrue(text.out().matches("(?s).*Billing:\\s+usage-based \\(AI Credits\\).*"), text.out());
            assertTrue(text.out().matches("(?s).*AI Credits:\\s+[0-9.]+ used through copilot-api, of 3900 included, at most [0-9.]+ left \\(month .* to .*\\).*"),
                text.out());
            CopilotApiTests.CliTests.Run asJson = CopilotApiTests.CliTests.cli(env, "check-usage", "--json");
            JsonNode fromCli = json(asJson.out()).path("copilot_api_credits");
            assertEquals(real, fromCli.path("used_through_copilot_api").asDouble(), 1e-12, asJson.out());
            assertTrue(java.time.Instant.parse(fromCli.path("resets").asText()).isAfter(java.time.Instant.now()), fromCli.toString());
        }
    }

    @Test
    void checkUsageOnALegacyPlanSaysPremiumRequests() throws Exception {
        try (StubUpstream stub = StubUpstream.start()) {
            java.util.Map<String, String> env = CopilotApiTests.CliTests.env(stub, java.nio.file.Files.createTempDirectory("h"));
            env.put("GH_TOKEN", StubUpstream.VALID_GITHUB_TOKEN);
            CopilotApiTests.CliTests.Run text = CopilotApiTests.CliTests.cli(env, "check-usage");
            assertEquals(0, text.exit(), text.err());
            assertTrue(text.out().matches("(?s).*Billing:\\s+premium requests × multiplier.*"), text.out());
            assertFalse(text.out().contains("AI Credits:"), text.out());
        }
    }

    /** The request log line: tokens in, out and cached, and the credits; an estimate is marked with "~". */
    @Test
    void theRequestLogLineSaysTokensAndCredits() throws Exception {
        try (StubUpstream stub = StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED).cachedTokens(3)) {
            java.util.Map<String, String> env = CopilotApiTests.CliTests.env(stub, java.nio.file.Files.createTempDirectory("h"));
            try (CopilotApiTests.CliTests.Started server = new CopilotApiTests.CliTests.Started(env)) {
                java.net.http.HttpClient client = java.net.http.HttpClient.newHttpClient();
                String base = server.baseUrl();
                HttpResponse<String> r = client.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create(base + "/v1/chat/completions"))
                    .header("content-type", "application/json").POST(java.net.http.HttpRequest.BodyPublishers.ofString(CHAT)).build(),
                    HttpResponse.BodyHandlers.ofString());
                assertEquals(200, r.statusCode(), r.body());
                String credits = CopilotApi.Operator.Cost.format(reported(json(r.body())));
                String line = ".*POST /v1/chat/completions gpt-4.1 \\[passthrough\\] 200 \\d+ms in=\\d+ out=\\d+ cached=3 "
                    + java.util.regex.Pattern.quote(credits) + " credits.*";
                assertTrue(eventually(Duration.ofSeconds(10), () -> server.log.toString(), log -> log.lines().anyMatch(l -> l.matches(line)))
                    .lines().anyMatch(l -> l.matches(line)), server.log.toString());
                stub.reportsCopilotUsage(false);
                client.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create(base + "/v1/messages"))
                    .header("content-type", "application/json").POST(java.net.http.HttpRequest.BodyPublishers.ofString(MESSAGES)).build(),
                    HttpResponse.BodyHandlers.ofString());
                String estimated = ".*POST /v1/messages claude-sonnet-4.5 \\[native\\] 200 .* cached=3 ~[0-9.]+ credits.*";
                assertTrue(eventually(Duration.ofSeconds(10), () -> server.log.toString(), log -> log.lines().anyMatch(l -> l.matches(estimated)))
                    .lines().anyMatch(l -> l.matches(estimated)), server.log.toString());
            }
        }
    }

    @Test
    void theDashboardShowsTodayTheMonthAgainstThePlanCacheHitsAndTheMostExpensive() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED).cachedTokens(9),
                new CopilotApi.Operator.Stats())) {
            HttpResponse<String> r = h.post("/v1/chat/completions", CHAT);
            JsonNode usage = json(r.body()).path("usage");
            String hits = String.format(java.util.Locale.ROOT, "%.1f%%", 9 * 100.0 / usage.path("prompt_tokens").asLong());
            historyRows(h, 1);
            String dom = CopilotApiTests.DashboardTests.render(h.url("/dashboard"));
            assertTrue(dom.contains("<b>This month (through copilot-api) of the plan's included credits</b>"), dom);
            assertTrue(dom.contains(" / 3,900 used ("), "against Pro+'s 3900 credits: " + dom);
            assertTrue(dom.matches("(?s).*<div id=\"credits-today\">Today: <b>[0-9.]+</b> credits · since start [0-9.]+ \\(0 estimated\\)"
                + " · cache hits " + java.util.regex.Pattern.quote(hits) + " of input tokens.*"), dom);
            assertTrue(dom.matches("(?s).*<tbody id=\"expensive\"><tr><td>[^<]+</td><td>gpt-4.1</td><td>passthrough</td><td>[0-9.]+</td></tr>.*"), dom);
        }
    }

    @Test
    void onALegacyPlanTheDashboardSaysItBillsPremiumRequests() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start(), new CopilotApi.Operator.Stats())) {
            assertEquals(200, h.post("/v1/chat/completions", CHAT).statusCode());
            String dom = CopilotApiTests.DashboardTests.render(h.url("/dashboard"));
            assertTrue(dom.contains("this plan bills premium requests"), dom);
            assertTrue(dom.contains("<div id=\"credits\"></div>"), "no credits shown: " + dom);
        }
    }

    /** Cached input is what makes a request cheap: every route's usage object keeps Copilot's cached-token count. */
    @Test
    void everyRoutesUsageKeepsCopilotsCachedTokenCount() throws Exception {
        try (CopilotApiTests.Harness h = harness(StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED).cachedTokens(7),
                new CopilotApi.Operator.Stats())) {
            JsonNode chat = json(h.post("/v1/chat/completions", CHAT).body()).path("usage");
            assertEquals(7, chat.path("prompt_tokens_details").path("cached_tokens").asInt(), chat.toString());
            JsonNode nativeMessages = json(h.post("/v1/messages", MESSAGES).body()).path("usage");
            assertEquals(7, nativeMessages.path("cache_read_input_tokens").asInt(), nativeMessages.toString());
            JsonNode translated = json(h.post("/v1/messages", MESSAGES.replace("claude-sonnet-4.5", "gpt-4.1")).body()).path("usage");
            assertEquals(7, translated.path("cache_read_input_tokens").asInt(), translated.toString());
            JsonNode responses = json(h.post("/v1/responses", RESPONSES).body()).path("usage");
            assertEquals(7, responses.path("input_tokens_details").path("cached_tokens").asInt(), responses.toString());
            JsonNode viaChat = json(h.post("/v1/chat/completions", CHAT.replace("gpt-4.1", "gpt-5.1-codex")).body()).path("usage");
            assertEquals(7, viaChat.path("prompt_tokens_details").path("cached_tokens").asInt(), "a Responses-only model on chat: " + viaChat);
        }
    }

    /** On /responses Copilot reports the figure at the top level of the response.completed event, beside response. */
    @Test
    void aResponsesStreamIsSettledWithTheFigureOfItsCompletedEvent() throws Exception {
        try (CopilotApiTests.Harness h = usageBased()) {
            HttpResponse<InputStream> r = h.postStreaming("/v1/responses", RESPONSES.replace("{\"model\"", "{\"stream\":true,\"model\""));
            String body;
            try (InputStream in = r.body()) {
                body = new String(in.readAllBytes(), StandardCharsets.UTF_8);
            }
            assertEquals(200, r.statusCode(), body);
            assertTrue(body.contains("response.completed"), body);
            JsonNode credits = credits(h, 1);
            assertEquals(1, credits.path("reported_requests").asLong(), credits.toString());
            assertTrue(credits.path("credits").asDouble() > 0, credits.toString());
        }
    }

    @Test
    void aBudgetThatCannotBeReadIsAUsageError() throws Exception {
        try (StubUpstream stub = StubUpstream.start()) {
            CopilotApiTests.CliTests.Run r = CopilotApiTests.CliTests.cli(CopilotApiTests.CliTests.env(stub, java.nio.file.Files.createTempDirectory("h")),
                "start", "--port", "0", "--budget", "5/week");
            assertEquals(2, r.exit(), r.out() + r.err());
            assertTrue(r.err().contains("--budget is CREDITS, CREDITS/day or CREDITS/month"), r.err());
        }
    }

    @Test
    void aBudgetIsCreditsPerDayOrMonth() {
        assertEquals(new CopilotApi.Operator.Cost.Budget(50, CopilotApi.Operator.Cost.Budget.Period.MONTH), CopilotApi.Operator.Cost.Budget.parse("50"));
        assertEquals(new CopilotApi.Operator.Cost.Budget(2.5, CopilotApi.Operator.Cost.Budget.Period.DAY), CopilotApi.Operator.Cost.Budget.parse("2.5/day"));
        assertEquals("2026-12-01T00:00:00Z", CopilotApi.Operator.Cost.Budget.parse("9/month").resets(java.time.Instant.parse("2026-11-30T23:59:00Z")).toString());
        for (String bad : new String[] {"-1", "x/day", "5/week"}) {
            try {
                CopilotApi.Operator.Cost.Budget.parse(bad);
                throw new AssertionError("accepted " + bad);
            } catch (IllegalArgumentException expected) {
                assertTrue(expected.getMessage().contains("--budget"), expected.getMessage());
            }
        }
    }
}
