package copilotapi;

import static copilotapi.CopilotApiTests.eventually;
import static copilotapi.CopilotApiTests.json;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/**
 * The store: stateful Responses on the forwarded and the translated route (item_reference, previous_response_id,
 * GET and DELETE), the request history, and what happens when the database file is corrupt or read-only.
 * Every check reads what the stub received or what a client gets back, so a store that keeps nothing fails here.
 */
class StoreTests {
    static final String TOOLS = "\"tools\":[{\"type\":\"function\",\"name\":\"Bash\",\"parameters\":{\"type\":\"object\","
        + "\"properties\":{\"command\":{\"type\":\"string\"}}}}]";

    static CopilotApiTests.Harness harness(Path home, CopilotApi.Store.Options options) throws Exception {
        return new CopilotApiTests.Harness(StubUpstream.start(), Map.of("COPILOT_API_HOME", home.toString()), options);
    }

    static CopilotApiTests.Harness harness() throws Exception {
        return harness(Files.createTempDirectory("copilot-api-store"), CopilotApi.Store.Options.DEFAULT);
    }

    static JsonNode ok(HttpResponse<String> r) {
        assertEquals(200, r.statusCode(), r.body());
        return json(r.body());
    }

    static JsonNode outputOfType(JsonNode response, String type) {
        for (JsonNode item : response.path("output")) if (item.path("type").asText().equals(type)) return item;
        throw new AssertionError("no " + type + " item in " + response);
    }

    /** The response object of a Responses stream's last event. */
    static JsonNode streamed(HttpResponse<String> r) {
        assertEquals(200, r.statusCode(), r.body());
        var events = CopilotApiTests.ResponsesRouteTests.events(r.body());
        var last = events.get(events.size() - 1);
        assertEquals("response.completed", last.getKey(), r.body());
        return last.getValue().path("response");
    }

    static String userText(String text) {
        return "{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"" + text + "\"}]}";
    }

    static String reference(String id) {
        return "{\"type\":\"item_reference\",\"id\":\"" + id + "\"}";
    }

    static List<String> chatContents(JsonNode chat) {
        List<String> out = new ArrayList<>();
        for (JsonNode m : chat.path("messages")) {
            JsonNode c = m.path("content");
            String text = c.isTextual() ? c.asText() : c.isArray() && !c.isEmpty() ? c.get(0).path("text").asText() : "";
            out.add(m.path("role").asText() + ":" + text);
        }
        return out;
    }

    // The AI SDK's second turn on a chat model: its earlier answer comes back as {"type":"item_reference","id":"msg_..."}.
    /**
     * Writes queued behind a slow one go in one transaction (another connection sees none of them until the last
     * has run); when one of them fails, the others still land once each, and the failure reported is that write's.
     */
    @Test
    void queuedWritesShareATransactionAndAFailingOneIsReportedAlone() throws Exception {
        Path file = Files.createTempDirectory("copilot-api-writer").resolve("t.db");
        java.sql.Connection c = java.sql.DriverManager.getConnection("jdbc:sqlite:" + file);
        java.sql.Connection other = java.sql.DriverManager.getConnection("jdbc:sqlite:" + file);
        try (var s = c.createStatement()) {
            s.execute("CREATE TABLE t (v TEXT NOT NULL)");
        }
        CopilotApi.Store.Health health = new CopilotApi.Store.Health();
        CopilotApi.Store.Writer writer = new CopilotApi.Store.Writer(health);
        writer.first(() -> writer.connected(c));
        java.util.concurrent.CountDownLatch hold = new java.util.concurrent.CountDownLatch(1);
        java.util.concurrent.CountDownLatch all = new java.util.concurrent.CountDownLatch(7);
        List<Long> seenByOther = java.util.Collections.synchronizedList(new ArrayList<>());
        java.util.concurrent.CountDownLatch started = new java.util.concurrent.CountDownLatch(1);
        writer.submit("first", x -> {
            started.countDown();
            try {
                hold.await();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
            insert(x, "a");
        }, all::countDown);
        assertTrue(started.await(10, java.util.concurrent.TimeUnit.SECONDS));
        writer.submit("second", x -> insert(x, "b"), all::countDown);
        writer.submit("third", x -> {
            insert(x, "c");
            seenByOther.add(count(other));
        }, all::countDown);
        hold.countDown();
        assertTrue(eventually(Duration.ofSeconds(10), () -> seenByOther.size(), n -> n == 1) == 1, "the third write ran");
        assertEquals(List.of(1L), seenByOther, "while the batch runs, only the first write is committed");
        assertEquals(3L, eventually(Duration.ofSeconds(10), () -> count(other), n -> n == 3));

        java.util.concurrent.CountDownLatch hold2 = new java.util.concurrent.CountDownLatch(1);
        writer.submit("holding", x -> {
            try {
                hold2.await();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        }, all::countDown);
        writer.submit("fourth", x -> insert(x, "d"), all::countDown);
        writer.submit("fifth", x -> insert(x, "e"), all::countDown);
        writer.submit("the broken one", x -> insert(x, null), all::countDown);
        hold2.countDown();
        assertTrue(all.await(10, java.util.concurrent.TimeUnit.SECONDS), "every write's completion ran");
        writer.close();
        List<String> rows = new ArrayList<>();
        try (var s = other.createStatement(); var r = s.executeQuery("SELECT v FROM t ORDER BY rowid")) {
            while (r.next()) rows.add(r.getString(1));
        }
        other.close();
        assertEquals(List.of("a", "b", "c", "d", "e"), rows);
        ObjectNode report = CopilotApi.Json.object();
        health.report(report);
        assertEquals("failing", report.path("state").asText(), report.toString());
        assertTrue(report.path("error").asText().startsWith("the broken one"), report.toString());
        assertEquals(1, report.path("failures").asLong(), report.toString());
    }

    private static long count(java.sql.Connection c) {
        try (var s = c.createStatement(); var r = s.executeQuery("SELECT count(*) FROM t")) {
            return r.next() ? r.getLong(1) : -1;
        } catch (java.sql.SQLException e) {
            throw new IllegalStateException(e);
        }
    }

    private static void insert(java.sql.Connection c, String v) throws java.sql.SQLException {
        try (var s = c.prepareStatement("INSERT INTO t (v) VALUES (?)")) {
            s.setString(1, v);
            s.executeUpdate();
        }
    }

    @Test
    void aSecondTurnOnAChatModelByItemReferenceCarriesTheEarlierAnswer() throws Exception {
        try (var h = harness()) {
            JsonNode first = ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":[" + userText("hi") + "]}"));
            assertTrue(first.path("store").asBoolean(false), "an answer that is kept says store: true: " + first);
            String msg = outputOfType(first, "message").path("id").asText();
            JsonNode second = ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":[" + userText("hi") + "," + reference(msg) + ","
                + userText("again") + "]}"));
            assertEquals("Hello from gpt-4.1.", outputOfType(second, "message").path("content").get(0).path("text").asText());
            assertEquals(List.of("user:hi", "assistant:Hello from gpt-4.1.", "user:again"), chatContents(h.stub.last("/chat/completions").json()));
        }
    }

    // The second step of a tool loop with reasoning on the forwarded route: the reasoning and the call by reference.
    @Test
    void aToolLoopWithReasoningOnTheForwardedRouteSendsCopilotTheFullItems() throws Exception {
        try (var h = harness()) {
            String first = "{\"model\":\"gpt-5.1-codex\",\"stream\":true,\"reasoning\":{\"effort\":\"low\"},\"input\":[" + userText("list files") + "]," + TOOLS + "}";
            JsonNode step1 = streamed(h.post("/v1/responses", first));
            JsonNode sent1 = h.stub.last("/responses").json();
            assertFalse(sent1.path("store").asBoolean(true), "Copilot always gets store: false");
            String rs = outputOfType(step1, "reasoning").path("id").asText();
            JsonNode call = outputOfType(step1, "function_call");
            String second = "{\"model\":\"gpt-5.1-codex\",\"stream\":true,\"reasoning\":{\"effort\":\"low\"},\"input\":[" + userText("list files") + ","
                + reference(rs) + "," + reference(call.path("id").asText()) + ",{\"type\":\"function_call_output\",\"call_id\":\""
                + call.path("call_id").asText() + "\",\"output\":\"a b c\"}]," + TOOLS + "}";
            JsonNode step2 = streamed(h.post("/v1/responses", second));
            assertEquals("Tool said: a b c", outputOfType(step2, "message").path("content").get(0).path("text").asText());
            JsonNode sent = h.stub.last("/responses").json();
            assertFalse(sent.path("store").asBoolean(true));
            assertFalse(sent.toString().contains("item_reference"), sent.toString());
            JsonNode input = sent.path("input");
            assertEquals("reasoning", input.get(1).path("type").asText(), input.toString());
            assertEquals(StubUpstream.REASONING_SIGNATURE, input.get(1).path("encrypted_content").asText(), "encrypted reasoning resolved");
            assertEquals("function_call", input.get(2).path("type").asText());
            assertEquals(call.path("call_id").asText(), input.get(2).path("call_id").asText());
        }
    }

    /**
     * Items sent without an id (the API allows it, and some clients send even calls and reasoning so) get one made from
     * the item and its place: the same each time the conversation is sent, so Copilot gets the same bytes; with the prefix of the item's type, which the Responses
     * API checks (fc_ for a call, rs_ for reasoning); one id per item, two equal items and an equal item of a later turn
     * included; and kept, so a later turn can name them by reference.
     */
    @Test
    void itemsSentWithoutIdsGetIdsThatAreStableDistinctAndCanBeReferenced() throws Exception {
        try (var h = harness()) {
            String body = "{\"model\":\"gpt-5.1-codex\",\"input\":[" + userText("again") + "," + userText("again")
                + ",{\"type\":\"reasoning\",\"summary\":[],\"encrypted_content\":\"" + StubUpstream.REASONING_SIGNATURE + "\"}"
                + ",{\"type\":\"function_call\",\"call_id\":\"call_1\",\"name\":\"Bash\",\"arguments\":\"{}\"}"
                + ",{\"type\":\"function_call_output\",\"call_id\":\"call_1\",\"output\":\"ok\"}]," + TOOLS + "}";
            JsonNode first = ok(h.post("/v1/responses", body));
            String sent = h.stub.last("/responses").body();
            ok(h.post("/v1/responses", body));
            assertEquals(sent, h.stub.last("/responses").body(), "the same request reaches Copilot as the same bytes");
            JsonNode input = json(sent).path("input");
            assertTrue(input.get(2).path("id").asText().startsWith("rs_"), input.toString());
            assertTrue(input.get(3).path("id").asText().startsWith("fc_"), input.toString());

            JsonNode items = ok(h.get("/v1/responses/" + first.path("id").asText() + "/input_items?order=asc")).path("data");
            List<String> ids = new ArrayList<>();
            for (JsonNode item : items) ids.add(item.path("id").asText());
            assertEquals(5, ids.stream().filter(id -> !id.isEmpty()).distinct().count(), "one id per item: " + ids);
            JsonNode next = ok(h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"previous_response_id\":\""
                + first.path("id").asText() + "\",\"input\":[" + userText("again") + "]}"));
            String later = ok(h.get("/v1/responses/" + next.path("id").asText() + "/input_items")).path("data").get(0).path("id").asText();
            assertFalse(ids.contains(later), "the same prompt in a later turn is another item: " + later + " " + ids);

            ok(h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":[" + reference(ids.get(3)) + "," + reference(ids.get(1))
                + "]," + TOOLS + "}"));
            JsonNode resolved = h.stub.last("/responses").json().path("input");
            assertEquals("call_1", resolved.get(0).path("call_id").asText(), resolved.toString());
            assertEquals(input.get(3).path("id"), resolved.get(0).path("id"), "the stored call goes with the id it was sent with");
            assertEquals("again", resolved.get(1).path("content").get(0).path("text").asText(), resolved.toString());
        }
    }

    // The same loop on a chat model (translated, streamed): the referenced call becomes the assistant's tool call.
    @Test
    void aToolLoopOnTheTranslatedRouteResolvesTheReferencedCall() throws Exception {
        try (var h = harness()) {
            JsonNode step1 = streamed(h.post("/v1/responses", "{\"model\":\"claude-sonnet-4.5\",\"stream\":true,\"input\":[" + userText("ls") + "]," + TOOLS + "}"));
            JsonNode call = outputOfType(step1, "function_call");
            List<String> refs = new ArrayList<>();
            for (JsonNode item : step1.path("output")) refs.add(reference(item.path("id").asText()));
            String second = "{\"model\":\"claude-sonnet-4.5\",\"stream\":true,\"input\":[" + userText("ls") + "," + String.join(",", refs)
                + ",{\"type\":\"function_call_output\",\"call_id\":\"" + call.path("call_id").asText() + "\",\"output\":\"x y\"}]," + TOOLS + "}";
            JsonNode step2 = streamed(h.post("/v1/responses", second));
            assertEquals("Tool said: x y", outputOfType(step2, "message").path("content").get(0).path("text").asText());
            JsonNode assistant = h.stub.last("/chat/completions").json().path("messages").get(1);
            assertEquals("assistant", assistant.path("role").asText());
            assertEquals(call.path("call_id").asText(), assistant.path("tool_calls").get(0).path("id").asText(), assistant.toString());
        }
    }

    // previous_response_id across a restart of copilot-api, then the GET and DELETE routes on what was kept.
    @Test
    void aPreviousResponseIdChainOfThreeTurnsSurvivesARestart() throws Exception {
        Path home = Files.createTempDirectory("copilot-api-store");
        String id1;
        try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
            id1 = ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"one\"}")).path("id").asText();
        }
        try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
            JsonNode two = ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"two\",\"previous_response_id\":\"" + id1 + "\"}"));
            assertEquals(id1, two.path("previous_response_id").asText());
            JsonNode three = ok(h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"three\",\"previous_response_id\":\""
                + two.path("id").asText() + "\"}"));
            JsonNode sent = h.stub.last("/responses").json().path("input");
            List<String> roles = new ArrayList<>();
            for (JsonNode item : sent) roles.add(item.path("role").asText() + ":" + item.path("content").get(0).path("text").asText());
            assertEquals(List.of("user:one", "assistant:Hello from gpt-4.1.", "user:two", "assistant:Hello from gpt-4.1.", "user:three"), roles);
            assertFalse(h.stub.last("/responses").json().has("previous_response_id"), "Copilot gets the items, not the id");

            String id3 = three.path("id").asText();
            JsonNode got = ok(h.get("/v1/responses/" + id3));
            assertEquals(three.path("output"), got.path("output"));
            assertEquals(two.path("id").asText(), got.path("previous_response_id").asText());
            JsonNode items = ok(h.get("/v1/responses/" + id3 + "/input_items"));
            assertEquals("list", items.path("object").asText());
            assertEquals(1, items.path("data").size(), items.toString());
            assertEquals("three", items.path("data").get(0).path("content").get(0).path("text").asText());
            assertEquals(items.path("data").get(0).path("id"), items.path("first_id"));
            assertEquals(items.path("data").get(0).path("id"), items.path("last_id"));
            assertFalse(items.path("has_more").asBoolean(true));

            JsonNode deleted = ok(h.send("DELETE", "/v1/responses/" + id1, null));
            assertEquals(json("{\"id\":\"" + id1 + "\",\"object\":\"response\",\"deleted\":true}"), deleted);
            HttpResponse<String> gone = h.get("/v1/responses/" + id1);
            assertEquals(404, gone.statusCode());
            assertEquals("invalid_request_error", json(gone.body()).path("error").path("type").asText(), gone.body());
            assertEquals(404, h.send("DELETE", "/v1/responses/" + id1, null).statusCode());
            int calls = h.stub.count("/responses") + h.stub.count("/chat/completions");
            HttpResponse<String> broken = h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"four\",\"previous_response_id\":\"" + id3 + "\"}");
            assertEquals(404, broken.statusCode(), "a chain with a deleted turn is refused, not answered without it: " + broken.body());
            assertEquals(calls, h.stub.count("/responses") + h.stub.count("/chat/completions"));
        }
    }

    @Test
    void itemsOfAStoreFalseAnswerCannotBeReferenced() throws Exception {
        try (var h = harness()) {
            JsonNode first = ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"store\":false,\"input\":\"hi\"}"));
            assertFalse(first.path("store").asBoolean(true));
            String msg = outputOfType(first, "message").path("id").asText();
            HttpResponse<String> r = h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":[" + reference(msg) + "," + userText("again") + "]}");
            assertEquals(404, r.statusCode(), r.body());
            JsonNode error = json(r.body()).path("error");
            assertTrue(error.path("message").asText().contains("Items are not persisted when `store` is set to false"), r.body());
            assertEquals("invalid_request_error", error.path("type").asText());
            assertEquals(404, h.get("/v1/responses/" + first.path("id").asText()).statusCode());
            assertEquals(1, h.stub.count("/chat/completions"), "the refused turn never reached Copilot");
        }
    }

    @Test
    void withNoStoreNothingIsKeptAndReferencesAre404s() throws Exception {
        Path home = Files.createTempDirectory("copilot-api-store");
        try (var h = harness(home, CopilotApi.Store.Options.OFF)) {
            JsonNode first = ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"hi\"}"));
            assertFalse(first.path("store").asBoolean(true));
            HttpResponse<String> r = h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"x\",\"previous_response_id\":\"" + first.path("id").asText() + "\"}");
            assertEquals(404, r.statusCode());
            assertTrue(r.body().contains("--no-store"), r.body());
            assertEquals(404, h.get("/history").statusCode());
            assertEquals("off", json(h.get("/stats").body()).path("store").path("state").asText());
            try (Stream<Path> files = Files.list(home)) {
                assertTrue(files.noneMatch(f -> f.getFileName().toString().startsWith("store.db")), "no database file");
            }
        }
    }

    // One row per request, for a mix of successes and failures on each API, read back through GET /history.
    @Test
    void theHistoryHasARowForEachRequestAndFilters() throws Exception {
        Path home = Files.createTempDirectory("copilot-api-store");
        try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
            Path db = home.resolve("store.db");
            // the store opens in the background once the server listens; /stats waits for it
            assertEquals("ok", ok(h.get("/stats")).path("store").path("state").asText());
            assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(db)));
            ok(h.send("POST", "/v1/chat/completions", CopilotApiTests.CHAT_HI, "user-agent", "history-test/1.0"));
            assertEquals(404, h.post("/v1/chat/completions", "{\"model\":\"nope\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}").statusCode());
            streamed(h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"stream\":true,\"input\":\"hi\"}"));
            ok(h.post("/v1/messages", CopilotApiTests.MESSAGES_HI));
            ok(h.get("/stats"));
            JsonNode all = eventually(Duration.ofSeconds(10), () -> history(h, ""), j -> j.path("data").size() >= 4);
            JsonNode rows = all.path("data");
            assertEquals(4, rows.size(), "the /stats poll has no row: " + all);
            JsonNode anthropic = rows.get(0);
            assertEquals("anthropic.messages", anthropic.path("api").asText());
            assertEquals("claude-sonnet-4.5", anthropic.path("requested_model").asText());
            JsonNode responses = rows.get(1);
            assertEquals("openai.responses", responses.path("api").asText());
            assertEquals("passthrough", responses.path("route").asText());
            assertTrue(responses.path("first_byte_ms").isIntegralNumber(), responses.toString());
            assertTrue(responses.path("output_tokens").asLong() > 0, responses.toString());
            JsonNode failed = rows.get(2);
            assertEquals(404, failed.path("status").asInt());
            assertEquals("nope", failed.path("requested_model").asText());
            assertFalse(failed.path("error_type").asText().isEmpty(), failed.toString());
            assertFalse(failed.path("error_message").asText().isEmpty(), failed.toString());
            JsonNode chat = rows.get(3);
            assertEquals("/v1/chat/completions", chat.path("path").asText());
            assertEquals("history-test/1.0", chat.path("user_agent").asText());
            assertEquals(200, chat.path("status").asInt());
            assertTrue(chat.path("input_tokens").asLong() > 0 && chat.path("total_ms").isIntegralNumber(), chat.toString());
            assertEquals("user", chat.path("initiator").asText(), "the ledger's initiator: " + chat);
            assertEquals(0.0, chat.path("premium_cost").asDouble(-1), "gpt-4.1 is included in the plan: " + chat);
            assertEquals("user", anthropic.path("initiator").asText(), anthropic.toString());
            assertEquals(1.0, anthropic.path("premium_cost").asDouble(-1), "a Claude Sonnet prompt costs one premium request: " + anthropic);
            assertFalse(chat.has("request_body"), "no bodies by default");

            assertEquals(1, history(h, "?status=error").path("data").size());
            assertEquals("nope", history(h, "?status=404").path("data").get(0).path("requested_model").asText());
            assertEquals(1, history(h, "?model=gpt-5.1-codex").path("data").size());
            JsonNode passthrough = history(h, "?route=passthrough").path("data");
            assertTrue(passthrough.size() >= 1, passthrough.toString());
            for (JsonNode row : passthrough) assertEquals("passthrough", row.path("route").asText(), row.toString());
            assertEquals(0, history(h, "?route=no-such-route").path("data").size());
            assertEquals(0, history(h, "?since=" + (System.currentTimeMillis() + 60_000)).path("data").size());
            JsonNode page = history(h, "?limit=3");
            assertTrue(page.path("has_more").asBoolean());
            JsonNode next = history(h, "?limit=3&before=" + page.path("next_before").asLong());
            assertEquals(1, next.path("data").size());
            assertEquals(chat.path("id"), next.path("data").get(0).path("id"));
            assertEquals(400, h.get("/history?status=bad").statusCode());
        }
        try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
            JsonNode rows = history(h, "").path("data");
            assertEquals(5, rows.size(), "the history survives a restart, with the refused /history query's row: " + rows);
            assertEquals("/history", rows.get(0).path("path").asText());
            assertEquals(400, rows.get(0).path("status").asInt());
        }
    }

    static JsonNode history(CopilotApiTests.Harness h, String query) {
        try {
            return ok(h.get("/history" + query));
        } catch (Exception e) {
            throw new AssertionError(e);
        }
    }

    @Test
    void historyBodiesAreKeptOnlyWhenAskedAndWithSecretsRedacted() throws Exception {
        var options = new CopilotApi.Store.Options(true, Optional.empty(), Duration.ofDays(30), 1 << 30, true);
        try (var h = harness(Files.createTempDirectory("copilot-api-store"), options)) {
            String secret = "ghu_" + "abcdefghijklmnopqrstuvwx";
            ok(h.post("/v1/chat/completions", "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"my token is " + secret + "\"}]}"));
            JsonNode row = eventually(Duration.ofSeconds(10), () -> history(h, ""), j -> j.path("data").size() == 1).path("data").get(0);
            assertTrue(row.path("request_body").asText().contains("my token is ghu_***"), row.toString());
            assertFalse(row.toString().contains(secret));
            assertTrue(row.path("response_body").asText().contains("Hello from gpt-4.1."), row.toString());
        }
    }

    // --history-bodies: every secret shape the log redacts is redacted in the history too, in what the client sent
    // (messages, tool output) and in what came back (the stub repeats the tool output in its answer).
    @Test
    void historyBodiesRedactEverySecretShapeInMessagesAndToolOutput() throws Exception {
        var options = new CopilotApi.Store.Options(true, Optional.empty(), Duration.ofDays(30), 1 << 30, true);
        try (var h = harness(Files.createTempDirectory("copilot-api-store"), options)) {
            String anthropicKey = "sk-ant-api03-" + "Xq7vR2mK9pL4sT8wZ1yB6nC3dF5gH0jA-Ee_Ii";
            String openAiKey = "sk-proj-" + "Mn4Bv7Cx2Zl9Kj5Hg1Fd8Sa3Qw6Er0Ty";
            String githubToken = "ghu_" + "Pl0Ok9Ij8Uh7Yg6Tf5Rd4Es3Wa2Qz1";
            String jwt = "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiJjb3BpbG90In0.Sg4dJ2kL9mN3pQ7rT1vW5xY8zA0bC6eF";
            List<String> otherSecrets = List.of("Kp3Lm8Qr5Tv1", "AKIA" + "Z7Q3M9X2B5N8C4V6", "AIza" + "SyD4Gh7Jk2Lm5Np8Qr1St4Uv7Wx0Yz3Ab6C",
                "xoxb-" + "2468013579-Hj6Kl9Mn2Pq5");
            String others = "x-api-key: " + otherSecrets.get(0) + " aws " + otherSecrets.get(1) + " google " + otherSecrets.get(2)
                + " slack " + otherSecrets.get(3) + " {\\\"client_secret\\\": \\\"Zx8Cv5Bn2Mq9\\\"}";
            String chat = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"use ANTHROPIC_API_KEY=" + anthropicKey
                + " and OPENAI_API_KEY=" + openAiKey + "\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
                + "\"type\":\"function\",\"function\":{\"name\":\"Bash\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"call_1\","
                + "\"content\":\"Authorization: Bearer " + jwt + " " + githubToken + " " + others + "\"}]}";
            JsonNode answer = ok(h.post("/v1/chat/completions", chat));
            assertTrue(answer.toString().contains("Bearer " + jwt.substring(0, 40)), "the client's own answer is not redacted: " + answer);
            String messages = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":50,\"messages\":[{\"role\":\"user\",\"content\":\"key "
                + anthropicKey + "\"},{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"Bash\","
                + "\"input\":{}}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":\""
                + openAiKey + " " + githubToken + "\"}]}]}";
            ok(h.post("/v1/messages", messages));
            JsonNode rows = eventually(Duration.ofSeconds(10), () -> history(h, ""), j -> j.path("data").size() == 2).path("data");
            assertEquals(2, rows.size(), rows.toString());
            String kept = rows.toString();
            List<String> secrets = new ArrayList<>(List.of(anthropicKey, openAiKey, githubToken, jwt, "Xq7vR2mK9pL4", "Mn4Bv7Cx2Zl9", "Pl0Ok9Ij8Uh7",
                "Sg4dJ2kL9mN3", "Zx8Cv5Bn2Mq9", "Z7Q3M9X2B5N8C4V6", "SyD4Gh7Jk2Lm5Np8", "Hj6Kl9Mn2Pq5"));
            secrets.addAll(otherSecrets);
            for (String secret : secrets) {
                assertFalse(kept.contains(secret), secret + " is in the history: " + kept);
            }
            JsonNode chatRow = rows.get(1);
            assertTrue(chatRow.path("request_body").asText().contains("use ANTHROPIC_API_KEY=*** and OPENAI_API_KEY=***"), chatRow.toString());
            assertTrue(rows.get(0).path("request_body").asText().contains("key sk-ant-***"), rows.get(0).toString());
            assertTrue(rows.get(0).path("request_body").asText().contains("sk-proj-*** ghu_***"), rows.get(0).toString());
            assertTrue(chatRow.path("response_body").asText().contains("Tool said: Authorization: Bearer ***"), chatRow.toString());
        }
    }

    @Test
    void aCorruptStoreIsMovedAsideAndANewOneServes() throws Exception {
        Path home = Files.createTempDirectory("copilot-api-store");
        Files.writeString(home.resolve("store.db"), "this is not a database, it only has the name of one ".repeat(100));
        try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
            // the store opens in the background; /stats answers once it has
            assertEquals("ok", json(h.get("/stats").body()).path("store").path("state").asText());
            try (Stream<Path> files = Files.list(home)) {
                assertTrue(files.anyMatch(f -> f.getFileName().toString().startsWith("store.db.corrupt-")), "the corrupt file was kept aside");
            }
            JsonNode first = ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"hi\"}"));
            ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"x\",\"previous_response_id\":\"" + first.path("id").asText() + "\"}"));
        }
    }

    // A database file that cannot be written (root ignores file modes, so the immutable attribute stands in there).
    @Test
    void aReadOnlyStoreIsReportedAndCopilotApiKeepsServing() throws Exception {
        Path home = Files.createTempDirectory("copilot-api-store");
        try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
            ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"hi\"}"));
        }
        Path db = home.resolve("store.db");
        boolean immutable = makeReadOnly(db);
        try {
            Assumptions.assumeFalse(Files.isWritable(db) && !immutable, "this file system lets the database be written anyway");
            try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
                ok(h.post("/v1/chat/completions", CopilotApiTests.CHAT_HI));
                JsonNode answer = ok(h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"stream\":false,\"input\":\"hi\"}"));
                assertEquals("response", answer.path("object").asText());
                JsonNode store = eventually(Duration.ofSeconds(10), () -> json(uncheckedGet(h, "/stats")).path("store"),
                    s -> s.path("state").asText().equals("failing"));
                assertEquals("failing", store.path("state").asText(), store.toString());
                assertFalse(store.path("error").asText().isEmpty(), store.toString());
            }
        } finally {
            if (immutable) new ProcessBuilder("chattr", "-i", db.toString()).start().waitFor();
        }
    }

    // A store that cannot be read answers 503 saying so (never 404 "not found", which tells a client the response is
    // gone for good) on every route that reads it; once the fault ends the same requests are served again.
    @Test
    void aStoreThatCannotBeReadAnswers503AndServesAgainOnceItCan() throws Exception {
        Path home = Files.createTempDirectory("copilot-api-store");
        try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
            JsonNode first = ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"hi\"}"));
            String id = first.path("id").asText();
            String msg = outputOfType(first, "message").path("id").asText();
            try (java.sql.Connection c = java.sql.DriverManager.getConnection("jdbc:sqlite:" + home.resolve("store.db"))) {
                try (var s = c.createStatement()) {
                    s.execute("PRAGMA busy_timeout = 5000");
                }
                assertEquals(1L, eventually(Duration.ofSeconds(10), () -> stored(c, id), n -> n == 1), "the answer reached the file");
                rename(c, "responses", "responses_away");
                rename(c, "items", "items_away");
                int calls = h.stub.count("/chat/completions");
                List<HttpResponse<String>> answers = List.of(h.get("/v1/responses/" + id), h.get("/v1/responses/" + id + "/input_items"),
                    h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"x\",\"previous_response_id\":\"" + id + "\"}"),
                    h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":[" + reference(msg) + "," + userText("again") + "]}"),
                    h.send("DELETE", "/v1/responses/" + id, null));
                for (HttpResponse<String> r : answers) {
                    assertEquals(503, r.statusCode(), r.request().method() + " " + r.request().uri() + " -> " + r.body());
                    JsonNode error = json(r.body()).path("error");
                    assertEquals("api_error", error.path("type").asText(), r.body());
                    assertTrue(error.path("message").asText().contains("store is failing"), r.body());
                }
                assertEquals(calls, h.stub.count("/chat/completions"), "no turn went on without its stored part");
                rename(c, "history", "history_away");
                HttpResponse<String> list = h.get("/history");
                assertEquals(503, list.statusCode(), list.body());
                assertTrue(json(list.body()).path("error").path("message").asText().contains("store is failing"), list.body());
                JsonNode summary = ok(h.get("/history/summary"));
                assertFalse(summary.path("available").asBoolean(true), "the dashboard still gets its page: " + summary);
                assertEquals("failing", summary.path("store").path("state").asText(), summary.toString());
                rename(c, "history_away", "history");
                rename(c, "responses_away", "responses");
                rename(c, "items_away", "items");
            }
            assertTrue(ok(h.get("/history/summary")).path("available").asBoolean(), "the summary is back");
            ok(h.get("/history"));
            assertEquals(first.path("output"), ok(h.get("/v1/responses/" + id)).path("output"));
            ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"x\",\"previous_response_id\":\"" + id + "\"}"));
            ok(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":[" + reference(msg) + "," + userText("again") + "]}"));
            ok(h.send("DELETE", "/v1/responses/" + id, null));
            assertEquals(404, h.get("/v1/responses/" + id).statusCode(), "deleted once the store works again");
        }
    }

    private static long stored(java.sql.Connection c, String id) {
        try (var s = c.prepareStatement("SELECT COUNT(*) FROM responses WHERE id = ?")) {
            s.setString(1, id);
            try (var r = s.executeQuery()) {
                return r.next() ? r.getLong(1) : 0;
            }
        } catch (java.sql.SQLException e) {
            throw new IllegalStateException(e);
        }
    }

    private static void rename(java.sql.Connection c, String from, String to) throws java.sql.SQLException {
        try (var s = c.createStatement()) {
            s.execute("ALTER TABLE " + from + " RENAME TO " + to);
        }
    }

    static String uncheckedGet(CopilotApiTests.Harness h, String path) {
        try {
            return h.get(path).body();
        } catch (Exception e) {
            throw new AssertionError(e);
        }
    }

    /** chmod 0400; for root, also chattr +i when the file system has it. True when the immutable flag was set. */
    static boolean makeReadOnly(Path file) throws Exception {
        Files.setPosixFilePermissions(file, PosixFilePermissions.fromString("r--------"));
        if (!"root".equals(System.getProperty("user.name"))) return false;
        try {
            return new ProcessBuilder("chattr", "+i", file.toString()).redirectErrorStream(true).start().waitFor() == 0;
        } catch (java.io.IOException noChattr) {
            return false;
        }
    }

    @Test
    void theResponsesObjectEchoesThePreviousResponseId() {
        ObjectNode request = (ObjectNode) json("{\"model\":\"m\",\"input\":\"x\",\"previous_response_id\":\"resp_1\"}");
        ObjectNode r = CopilotApi.Responses.ResponseObject.build(request, "resp_2", 1, "m", "completed");
        assertEquals("resp_1", r.path("previous_response_id").asText());
        assertTrue(CopilotApi.Responses.ResponseObject.build((ObjectNode) json("{\"input\":\"x\"}"), "resp_3", 1, "m", "completed")
            .path("previous_response_id").isNull());
    }

    static CopilotApi.HistoryRow row(long at, String model) {
        return new CopilotApi.HistoryRow(null, at, "openai", "POST", "/v1/chat/completions", model, model, "passthrough", 200, null, null,
            10L, 20L, 5L, 5L, 0L, "test", null, null, null, "x".repeat(2000));
    }

    static int historyRows(java.sql.Connection c) throws Exception {
        try (var s = c.createStatement(); var r = s.executeQuery("SELECT COUNT(*) FROM history")) {
            r.next();
            return r.getInt(1);
        }
    }

    /**
     * The dashboard's summary over more than 50,000 rows in a week: exact counts per day and per model, exact
     * nearest-rank p50/p95, rows older than a week left out, and an answer of a few kilobytes although the latest
     * failures carry a megabyte of body each (it is counted by SQLite, not built from loaded rows).
     */
    @Test
    void theSummaryCountsEveryRowOfTheWeekBeyondFiftyThousandAndCarriesNoBodies() throws Exception {
        Path home = Files.createTempDirectory("copilot-api-summary");
        long now = System.currentTimeMillis();
        List<CopilotApi.HistoryRow> rows = new ArrayList<>();
        for (int i = 0; i < 60_000; i++) {
            long at = now - 60_000 - (long) (i % 150) * 3_600_000 - i;
            String model = i % 10 == 9 ? null : "model-" + (i % 3);
            boolean failed = i % 7 == 0;
            String errorType = !failed && i % 11 == 0 ? "stream_error" : failed ? "api_error" : null;
            rows.add(new CopilotApi.HistoryRow(null, at, "openai.chat", "POST", "/v1/chat/completions", model, model, "passthrough",
                failed ? 500 : 200, errorType, errorType == null ? null : "broke", 5L, (long) ((i * 37) % 1000), i % 4 == 0 ? null : (long) (i % 50),
                (long) (i % 13), 0L, "test", null, null, null, null));
        }
        for (int i = 0; i < 500; i++) {
            rows.add(new CopilotApi.HistoryRow(null, now - java.time.Duration.ofDays(8).toMillis() - i, "openai.chat", "POST", "/v1/chat/completions",
                "model-0", "model-0", "passthrough", 500, "api_error", "old", 5L, 1L, 1L, 1L, 0L, "test", null, null, null, null));
        }
        String megabyte = "b".repeat(1 << 20);
        for (int i = 0; i < 12; i++) {
            rows.add(new CopilotApi.HistoryRow(null, now - 1000 + i, "anthropic.messages", "POST", "/v1/messages", "model-1", "model-1", "native",
                429, "rate_limit_error", "slow down", 5L, 7L, 1L, 1L, 0L, "test", null, null, megabyte, megabyte));
        }
        Path file = home.resolve("store.db");
        CopilotApi.Store.Db.create(file);
        try (java.sql.Connection c = CopilotApi.Store.Db.connect(file)) {
            CopilotApi.Store.Db.migrate(c);
            CopilotApi.Store.Db.inTransaction(c, tx -> {
                for (CopilotApi.HistoryRow r : rows) CopilotApi.Store.Db.insertHistory(tx, r);
                return null;
            });
        }
        List<CopilotApi.HistoryRow> week = rows.stream().filter(r -> r.at() > now - java.time.Duration.ofDays(7).toMillis()).toList();
        java.util.function.Predicate<CopilotApi.HistoryRow> failed = r -> r.status() >= 400 || r.errorType() != null;
        try (var h = harness(home, CopilotApi.Store.Options.DEFAULT)) {
            HttpResponse<String> answer = h.get("/history/summary");
            assertEquals(200, answer.statusCode(), answer.body().substring(0, Math.min(2000, answer.body().length())));
            JsonNode summary = json(answer.body());
            assertTrue(summary.path("available").asBoolean(), summary.toString());
            assertEquals(7, summary.path("days").asInt());

            Map<String, long[]> days = new java.util.TreeMap<>(java.util.Comparator.reverseOrder());
            for (CopilotApi.HistoryRow r : week) {
                long[] n = days.computeIfAbsent(java.time.Instant.ofEpochMilli(r.at()).atZone(java.time.ZoneOffset.UTC).toLocalDate().toString(), d -> new long[2]);
                n[0]++;
                if (failed.test(r)) n[1]++;
            }
            List<String> expectedDays = new ArrayList<>();
            days.forEach((day, n) -> expectedDays.add(day + " " + n[0] + " " + n[1]));
            List<String> perDay = new ArrayList<>();
            for (JsonNode d : summary.path("per_day")) perDay.add(d.path("day").asText() + " " + d.path("requests").asLong() + " " + d.path("errors").asLong());
            assertEquals(expectedDays, perDay);
            assertEquals(week.size(), perDay.stream().mapToLong(d -> Long.parseLong(d.split(" ")[1])).sum());

            List<CopilotApi.HistoryRow> withModel = week.stream().filter(r -> r.requestedModel() != null).toList();
            assertEquals(latency(withModel), latencyOf(summary.path("latency")));
            List<String> expectedModels = new ArrayList<>();
            List<String> byRequests = withModel.stream().map(CopilotApi.HistoryRow::upstreamModel).distinct()
                .sorted(java.util.Comparator.comparingLong((String m) -> -withModel.stream().filter(r -> r.upstreamModel().equals(m)).count())
                    .thenComparing(m -> m)).toList();
            assertEquals(3, byRequests.size());
            for (String m : byRequests) {
                List<CopilotApi.HistoryRow> of = withModel.stream().filter(r -> r.upstreamModel().equals(m)).toList();
                expectedModels.add(m + " " + latency(of) + " errors " + of.stream().filter(failed).count()
                    + " in " + of.stream().mapToLong(r -> r.inputTokens() == null ? 0 : r.inputTokens()).sum()
                    + " out " + of.stream().mapToLong(r -> r.outputTokens() == null ? 0 : r.outputTokens()).sum());
            }
            List<String> perModel = new ArrayList<>();
            for (JsonNode m : summary.path("per_model")) {
                perModel.add(m.path("model").asText() + " " + latencyOf(m) + " errors " + m.path("errors").asLong()
                    + " in " + m.path("input_tokens").asLong() + " out " + m.path("output_tokens").asLong());
            }
            assertEquals(expectedModels, perModel);

            JsonNode errors = summary.path("recent_errors");
            assertEquals(10, errors.size(), errors.toString());
            assertEquals(now - 1000 + 11, java.time.Instant.parse(errors.get(0).path("time").asText()).toEpochMilli(), "newest first");
            for (JsonNode e : errors) {
                assertEquals(429, e.path("status").asInt(), e.toString());
                assertFalse(e.has("request_body") || e.has("response_body"), "no bodies in the summary: " + e.path("id"));
            }
            assertTrue(answer.body().length() < 64 * 1024, "a summary is small, whatever the rows hold: " + answer.body().length() + " characters");
        }
    }

    /** Requests, nearest-rank p50 and p95 of the rows' total times, as the summary words them. */
    private static String latency(List<CopilotApi.HistoryRow> rows) {
        List<Long> ms = rows.stream().map(CopilotApi.HistoryRow::totalMs).sorted().toList();
        return ms.size() + " p50 " + ms.get((int) Math.ceil(0.50 * ms.size()) - 1) + " p95 " + ms.get((int) Math.ceil(0.95 * ms.size()) - 1);
    }

    private static String latencyOf(JsonNode o) {
        return o.path("requests").asLong() + " p50 " + o.path("p50_ms").asLong() + " p95 " + o.path("p95_ms").asLong();
    }

    /** --store-days: rows older than the limit go; --store-max-mb: past the size the oldest go first, the newest stay. */
    @Test
    void retentionByAgeAndBySize() throws Exception {
        Path file = Files.createTempDirectory("copilot-api-prune").resolve("store.db");
        CopilotApi.Store.Db.create(file);
        try (java.sql.Connection c = CopilotApi.Store.Db.connect(file)) {
            CopilotApi.Store.Db.migrate(c);
            long now = System.currentTimeMillis();
            long old = now - java.time.Duration.ofDays(40).toMillis();
            for (int i = 0; i < 5; i++) CopilotApi.Store.Db.insertHistory(c, row(old + i, "old-model"));
            for (int i = 0; i < 5; i++) CopilotApi.Store.Db.insertHistory(c, row(now + i, "new-model"));
            CopilotApi.Store.Db.prune(c, now - java.time.Duration.ofDays(30).toMillis(), Long.MAX_VALUE);
            assertEquals(5, historyRows(c), "the five rows past the age limit went");
            for (int i = 0; i < 2000; i++) CopilotApi.Store.Db.insertHistory(c, row(now + 10 + i, "bulk"));
            long limit = 1024 * 1024;
            CopilotApi.Store.Db.prune(c, 0, limit);
            int left = historyRows(c);
            assertTrue(left < 2005 && left > 0, "some rows went, some stayed: " + left);
            try (var s = c.createStatement(); var r = s.executeQuery("SELECT MAX(at) FROM history")) {
                r.next();
                assertEquals(now + 10 + 1999, r.getLong(1), "the newest row stays");
            }
            try (var s = c.createStatement(); var r = s.executeQuery("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")) {
                r.next();
                assertTrue(r.getLong(1) <= limit, "the file fits the size limit after pruning: " + r.getLong(1));
            }
        }
    }
}
