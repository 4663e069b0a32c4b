package copilotapi;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.fasterxml.jackson.databind.node.TextNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/**
 * The Anthropic translators against fixture files, plus stream invariants and the stream/non-stream property.
 *
 * <p>Fixtures live in {@code tests/fixtures/anthropic/<case>/}:
 * <ul>
 *   <li>request: {@code request.json}, optional {@code model.json} (a Copilot catalog entry), and either
 *       {@code expected-chat.json} + {@code expected-result.json} ({@code vision}, {@code initiator},
 *       {@code toolNameMap}, {@code notes}) or {@code expected-error.json} ({@code status}, {@code type},
 *       {@code message_contains});</li>
 *   <li>response: {@code chat-response.json} + {@code expected-message.json};</li>
 *   <li>stream: {@code upstream.sse} ({@code data: ...} lines; {@code data: [DONE]}; {@code !cut MESSAGE} for a
 *       stream that breaks) + {@code expected.events} ({@code event:}/{@code data:} pairs).</li>
 * </ul>
 * Responses and streams take an optional {@code context.json} ({@code requested_model}, {@code tool_names}) and an
 * optional {@code expected-notes.json} (no notes expected when absent). Ids are replaced by placeholders.
 */
class AnthropicTranslatorTests {
    static final String DEFAULT_MODEL = "claude-sonnet-4-5-20250929";

    // ---- fixtures ----

    static Path fixtures() {
        return CopilotApiTests.fixtures("anthropic");
    }

    static List<Path> cases(String marker) {
        try (Stream<Path> dirs = Files.list(fixtures())) {
            List<Path> list = dirs.filter(d -> Files.isRegularFile(d.resolve(marker))).sorted().collect(Collectors.toList());
            assertFalse(list.isEmpty(), "no fixture with " + marker + " under " + fixtures().toAbsolutePath());
            return list;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    @Test
    void everyFixtureDirectoryIsOneKnownKind() throws IOException {
        try (Stream<Path> dirs = Files.list(fixtures())) {
            for (Path d : dirs.filter(Files::isDirectory).collect(Collectors.toList())) {
                int kinds = 0;
                for (String marker : List.of("request.json", "chat-response.json", "upstream.sse")) {
                    if (Files.exists(d.resolve(marker))) kinds++;
                }
                assertEquals(1, kinds, d + " must hold exactly one of request.json, chat-response.json, upstream.sse");
                boolean expected = Files.exists(d.resolve("expected-chat.json")) || Files.exists(d.resolve("expected-error.json"))
                    || Files.exists(d.resolve("expected-message.json")) || Files.exists(d.resolve("expected.events"));
                assertTrue(expected, d + " has no expected file");
            }
        }
    }

    @TestFactory
    Stream<DynamicTest> requestFixtures() {
        return cases("request.json").stream().map(dir -> DynamicTest.dynamicTest(dir.getFileName().toString(), () -> {
            ObjectNode request = (ObjectNode) read(dir.resolve("request.json"));
            CopilotApi.Chat.ModelLimits limits = limits(dir, request);
            String upstreamModel = limits.id().isEmpty() ? request.path("model").asText() : limits.id();
            if (Files.exists(dir.resolve("expected-error.json"))) {
                JsonNode expected = read(dir.resolve("expected-error.json"));
                CopilotApi.ApiError e = assertThrows(CopilotApi.ApiError.class,
                    () -> CopilotApi.Anthropic.AnthropicToChat.request(request, upstreamModel, limits));
                assertEquals(expected.path("status").asInt(), e.status());
                assertEquals(expected.path("type").asText(), e.type());
                assertTrue(e.getMessage().contains(expected.path("message_contains").asText()), e.getMessage());
                return;
            }
            ObjectNode original = request.deepCopy();
            var result = CopilotApi.Anthropic.AnthropicToChat.request(request, upstreamModel, limits);
            assertEquals(original, request, "the translator must not change its input");
            assertJson(read(dir.resolve("expected-chat.json")), result.chatRequest(), dir + "/expected-chat.json");
            ObjectNode meta = CopilotApi.Json.object();
            meta.put("vision", result.vision());
            meta.put("initiator", result.initiator().wire());
            meta.set("toolNameMap", CopilotApi.JSON.valueToTree(new TreeMap<>(result.toolNameMap())));
            meta.set("notes", CopilotApi.JSON.valueToTree(result.notes()));
            assertEquals(read(dir.resolve("expected-result.json")), meta, dir + "/expected-result.json");
            assertChatRequestIsValid(result.chatRequest());
        }));
    }

    @TestFactory
    Stream<DynamicTest> responseFixtures() {
        return cases("chat-response.json").stream().map(dir -> DynamicTest.dynamicTest(dir.getFileName().toString(), () -> {
            JsonNode context = context(dir);
            List<String> notes = new ArrayList<>();
            ObjectNode message = folded(read(dir.resolve("chat-response.json")),
                context.path("requested_model").asText(DEFAULT_MODEL), toolNames(context), notes);
            assertJson(read(dir.resolve("expected-message.json")), message, dir + "/expected-message.json");
            assertTrue(message.path("id").asText().matches("msg_[A-Za-z0-9]{24}"), message.path("id").asText());
            assertEquals(expectedNotes(dir), notes);
        }));
    }

    @TestFactory
    Stream<DynamicTest> streamFixtures() {
        return cases("upstream.sse").stream().map(dir -> DynamicTest.dynamicTest(dir.getFileName().toString(), () -> {
            Run run = runStream(dir);
            assertWellFormed(run.events());
            List<JsonNode> expected = readEvents(dir.resolve("expected.events"));
            assertJson(CopilotApi.JSON.valueToTree(expected), eventsAsJson(run.events()), dir + "/expected.events");
            assertEquals(expectedNotes(dir), run.notes());
            assertSentAsTheyArrive(upstream(dir).chunks(), run.perChunk());
        }));
    }

    /** message_start with the first chunk; every text and thinking fragment in the events of the chunk that carried it. */
    static void assertSentAsTheyArrive(List<JsonNode> chunks, List<List<CopilotApi.NamedEvent>> perChunk) {
        if (chunks.isEmpty() || chunks.get(0).has("error")) return;
        assertEquals("message_start", perChunk.get(0).get(0).name(), "message_start goes out with the first chunk");
        for (int i = 0; i < chunks.size(); i++) {
            List<String> sent = new ArrayList<>();
            for (var e : perChunk.get(i)) {
                JsonNode d = e.data().path("delta");
                sent.add(d.path("type").asText() + ":" + d.path("text").asText(d.path("thinking").asText("")));
            }
            for (JsonNode choice : chunks.get(i).path("choices")) {
                String text = choice.path("delta").path("content").asText("");
                String thinking = choice.path("delta").path("reasoning_text").asText("");
                if (!text.isEmpty()) assertTrue(sent.contains("text_delta:" + text), "chunk " + i + ": text \"" + text + "\" not sent at once: " + sent);
                if (!thinking.isEmpty()) assertTrue(sent.contains("thinking_delta:" + thinking), "chunk " + i + ": thinking not sent at once: " + sent);
            }
        }
    }

    // ---- request rules not worth a fixture each ----

    @Test
    void modelLimitsFromTheCatalog() {
        JsonNode model = json("""
            {"id":"claude-sonnet-4.5","capabilities":{"limits":{"max_output_tokens":16000},
             "supports":{"min_thinking_budget":1024,"max_thinking_budget":32000}}}""");
        assertEquals(new CopilotApi.Chat.ModelLimits("claude-sonnet-4.5", 16000, 1024, 32000, false),
            CopilotApi.Chat.ModelLimits.from(model));
        var bare = CopilotApi.Chat.ModelLimits.from(json("{\"id\":\"gpt-4o\",\"capabilities\":{}}"));
        assertEquals(new CopilotApi.Chat.ModelLimits("gpt-4o", 0, null, null, false), bare);
        assertFalse(bare.knowsMaxOutput());
        assertFalse(bare.supportsThinking());
        assertEquals(new CopilotApi.Chat.ModelLimits("mystery", 0, null, null, false),
            CopilotApi.Chat.ModelLimits.unknown("mystery"));
    }

    @Test
    void maxCompletionTokensForGpt5AndTheOSeries() {
        for (String id : List.of("gpt-5", "gpt-5-mini", "gpt-5.1", "GPT-5.2-codex", "o1", "o3-mini", "o4-mini")) {
            assertTrue(CopilotApi.Chat.ModelLimits.wantsMaxCompletionTokens(id), id);
        }
        for (String id : List.of("gpt-4o", "gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-pro", "omni", "")) {
            assertFalse(CopilotApi.Chat.ModelLimits.wantsMaxCompletionTokens(id), id);
        }
    }

    @Test
    void longToolNamesAreShortenedDeterministicallyAndDistinctly() {
        String a = "mcp__" + "x".repeat(70) + "__alpha";
        String b = "mcp__" + "x".repeat(70) + "__beta";
        String shortA = CopilotApi.Anthropic.AnthropicToChat.shortToolName(a);
        assertEquals(64, shortA.length());
        assertEquals(shortA, CopilotApi.Anthropic.AnthropicToChat.shortToolName(a));
        assertNotEquals(shortA, CopilotApi.Anthropic.AnthropicToChat.shortToolName(b));
        assertTrue(shortA.matches("[A-Za-z0-9_-]{1,64}"));
        String exactly64 = "t".repeat(64);
        assertEquals(exactly64, CopilotApi.Anthropic.AnthropicToChat.shortToolName(exactly64));
        assertEquals(64, CopilotApi.Anthropic.AnthropicToChat.shortToolName("t".repeat(65)).length());
    }

    @Test
    void toolChoiceMapping() {
        Map<String, String> cases = new LinkedHashMap<>();
        cases.put("{\"type\":\"auto\"}", "\"auto\"");
        cases.put("{\"type\":\"any\"}", "\"required\"");
        cases.put("{\"type\":\"none\"}", "\"none\"");
        cases.put("{\"type\":\"tool\",\"name\":\"Read\"}", "{\"type\":\"function\",\"function\":{\"name\":\"Read\"}}");
        cases.put("{\"type\":\"tool\",\"name\":\"Nope\"}", null);
        cases.forEach((choice, expected) -> {
            ObjectNode req = (ObjectNode) json("{\"model\":\"m\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                + "\"tools\":[{\"name\":\"Read\",\"input_schema\":{\"type\":\"object\"}}],\"tool_choice\":" + choice + "}");
            ObjectNode chat = CopilotApi.Anthropic.AnthropicToChat.request(req, "m", CopilotApi.Chat.ModelLimits.unknown("m")).chatRequest();
            assertEquals(expected == null ? null : json(expected), chat.get("tool_choice"), choice);
            assertFalse(chat.has("parallel_tool_calls"), choice);
        });
        ObjectNode req = (ObjectNode) json("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
            + "\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}],\"tool_choice\":{\"type\":\"any\"}}");
        var only = CopilotApi.Anthropic.AnthropicToChat.request(req, "m", CopilotApi.Chat.ModelLimits.unknown("m"));
        assertFalse(only.chatRequest().has("tools"), "server tools are never sent");
        assertFalse(only.chatRequest().has("tool_choice"), "tool_choice without tools is refused upstream");
    }

    @Test
    void metadataUserIdOnlyWhenShortAndPlain() {
        Map<String, Boolean> ids = new LinkedHashMap<>();
        ids.put("user_123.abc:def-ghi", true);
        ids.put("x".repeat(64), true);
        ids.put("x".repeat(65), false);
        ids.put("{\"device_id\":\"d\",\"session_id\":\"s\"}", false);
        ids.put("has space", false);
        ids.forEach((id, kept) -> {
            ObjectNode req = (ObjectNode) json("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
            req.putObject("metadata").put("user_id", id);
            ObjectNode chat = CopilotApi.Anthropic.AnthropicToChat.request(req, "m", CopilotApi.Chat.ModelLimits.unknown("m")).chatRequest();
            assertEquals(kept ? new TextNode(id) : null, chat.get("user"), id);
        });
    }

    @Test
    void thinkingBudgetPerEffortWithinTheModelsRange() {
        var limits = new CopilotApi.Chat.ModelLimits("claude-sonnet-4.5", 64000, 1024, 32000, false);
        Map<String, Integer> cases = new LinkedHashMap<>();
        cases.put("{\"type\":\"adaptive\"}", 32000);
        cases.put("{\"type\":\"adaptive\"},\"output_config\":{\"effort\":\"low\"}", 2048);
        cases.put("{\"type\":\"adaptive\"},\"output_config\":{\"effort\":\"medium\"}", 8192);
        cases.put("{\"type\":\"adaptive\"},\"output_config\":{\"effort\":\"high\"}", 32000);
        cases.put("{\"type\":\"enabled\",\"budget_tokens\":500}", 1024);
        cases.put("{\"type\":\"enabled\",\"budget_tokens\":5000}", 5000);
        cases.put("{\"type\":\"enabled\",\"budget_tokens\":50000}", 32000);
        cases.put("{\"type\":\"disabled\"}", null);
        cases.forEach((thinking, expected) -> {
            ObjectNode req = (ObjectNode) json("{\"model\":\"m\",\"max_tokens\":64000,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                + "\"thinking\":" + thinking + "}");
            JsonNode budget = CopilotApi.Anthropic.AnthropicToChat.request(req, "m", limits).chatRequest().get("thinking_budget");
            assertEquals(expected, budget == null ? null : budget.asInt(), thinking);
        });
        ObjectNode tight = (ObjectNode) json("{\"model\":\"m\",\"max_tokens\":1000,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
            + "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":2000}}");
        var r = CopilotApi.Anthropic.AnthropicToChat.request(tight, "m", limits);
        assertFalse(r.chatRequest().has("thinking_budget"), "no budget fits under max_tokens 1000 with a minimum of 1024");
        assertEquals(1, r.notes().size(), r.notes().toString());
    }

    @Test
    void initiatorFollowsTheAnthropicMessages() {
        Map<String, String> cases = new LinkedHashMap<>();
        cases.put("[{\"role\":\"user\",\"content\":\"hi\"}]", "user");
        cases.put("[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":\"ok\"}]}]", "agent");
        cases.put("[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":\"ok\"},"
            + "{\"type\":\"text\",\"text\":\"and now?\"}]}]", "user");
        cases.put("[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"Sure,\"}]", "agent");
        cases.forEach((messages, expected) -> {
            ObjectNode req = (ObjectNode) json("{\"model\":\"m\",\"messages\":" + messages + "}");
            assertEquals(expected, CopilotApi.Anthropic.AnthropicToChat.request(req, "m",
                CopilotApi.Chat.ModelLimits.unknown("m")).initiator().wire(), messages);
        });
    }

    // ---- stream rules not worth a fixture each ----

    @Test
    void nothingIsSentAfterTheEnd() {
        var s = new CopilotApi.Anthropic.ChatStreamToAnthropic("m", Map.of(), counter());
        assertEquals("message_start", s.start().get(0).name());
        assertTrue(s.start().isEmpty(), "message_start is sent once");
        assertFalse(s.finish().isEmpty());
        assertTrue(s.done());
        assertTrue(s.onChunk(json("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"late\"}}]}")).isEmpty());
        assertTrue(s.finish().isEmpty());
        assertTrue(s.fail("late").isEmpty());
        var broken = new CopilotApi.Anthropic.ChatStreamToAnthropic("m", Map.of(), counter());
        assertEquals(List.of("error"), names(broken.fail("cut")));
        assertTrue(broken.finish().isEmpty());
        assertEquals("ping", broken.keepAlive().data().path("type").asText());
    }

    @Test
    void anErrorChunkEndsTheStreamWithAnErrorEvent() {
        var s = new CopilotApi.Anthropic.ChatStreamToAnthropic("m", Map.of(), counter());
        List<CopilotApi.NamedEvent> events = new ArrayList<>();
        events.addAll(s.onChunk(json("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}")));
        events.addAll(s.onChunk(json("{\"error\":{\"message\":\"upstream overloaded\",\"code\":\"overloaded\"}}")));
        events.addAll(s.finish());
        assertWellFormed(events);
        CopilotApi.NamedEvent last = events.get(events.size() - 1);
        assertEquals("error", last.name());
        assertEquals("upstream overloaded", last.data().path("error").path("message").asText());
        assertEquals("api_error", last.data().path("error").path("type").asText());
    }

    @Test
    void everyEventCarriesItsNameAsType() {
        var s = new CopilotApi.Anthropic.ChatStreamToAnthropic("m", Map.of(), counter());
        List<CopilotApi.NamedEvent> events = new ArrayList<>(s.onChunk(json(
            "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}")));
        events.addAll(s.finish());
        for (var e : events) {
            assertEquals(e.name(), e.data().path("type").asText());
            assertTrue(e.sse().startsWith("event: " + e.name() + "\ndata: {"), e.sse());
            assertTrue(e.sse().endsWith("}\n\n"), e.sse());
        }
    }

    /** The checker used on every fixture must reject the mistakes it exists to catch. */
    @Test
    void theStreamCheckerRejectsBrokenStreams() {
        String start = "message_start {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":0,\"output_tokens\":0,"
            + "\"cache_read_input_tokens\":0,\"cache_creation_input_tokens\":0}}}\n";
        String end = "message_delta {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},"
            + "\"usage\":{\"output_tokens\":1}}\nmessage_stop {\"type\":\"message_stop\"}\n";
        String toolStart = "content_block_start {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"n\",\"input\":{}}}\n";
        String toolDelta = "content_block_delta {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n";
        String stop0 = "content_block_stop {\"type\":\"content_block_stop\",\"index\":0}\n";
        assertWellFormed(events(start + toolStart + toolDelta + stop0 + end));
        List<String> broken = List.of(
            toolStart + toolDelta + stop0 + end,
            start + toolStart + stop0 + end,
            start + toolStart + toolDelta.replace("{}", "{") + stop0 + end,
            start + toolStart + toolDelta + stop0 + toolDelta + end,
            start + toolStart + toolStart.replace("\"index\":0", "\"index\":1") + toolDelta + stop0 + end,
            start + toolStart.replace("\"index\":0", "\"index\":1") + toolDelta + stop0 + end,
            start + toolStart + toolDelta + end,
            start + toolStart + toolDelta + stop0 + end.replace("tool_use", "end_turn"),
            start + toolStart + toolDelta + stop0 + end + "message_stop {\"type\":\"message_stop\"}\n",
            start + toolStart + toolDelta + stop0 + end + "ping {\"type\":\"ping\"}\n",
            start + start + toolStart + toolDelta + stop0 + end);
        for (String b : broken) {
            assertThrows(AssertionError.class, () -> assertWellFormed(events(b)), b);
        }
    }

    // ---- running a stream fixture ----

    record Upstream(List<JsonNode> chunks, boolean done, String cutMessage) {
        boolean cut() {
            return cutMessage != null;
        }
    }

    /** All events, the events each upstream chunk produced (in order), and the notes. */
    record Run(List<CopilotApi.NamedEvent> events,
        List<List<CopilotApi.NamedEvent>> perChunk, List<String> notes) {}

    static Upstream upstream(Path dir) {
        List<JsonNode> chunks = new ArrayList<>();
        for (String line : lines(dir.resolve("upstream.sse"))) {
            if (line.startsWith("!cut ")) return new Upstream(chunks, false, line.substring(5));
            if (!line.startsWith("data:")) continue;
            String data = line.substring(5).strip();
            if (data.equals("[DONE]")) return new Upstream(chunks, true, null);
            chunks.add(json(data));
        }
        return new Upstream(chunks, false, null);
    }

    static Run runStream(Path dir) {
        JsonNode context = context(dir);
        Upstream up = upstream(dir);
        var s = new CopilotApi.Anthropic.ChatStreamToAnthropic(context.path("requested_model").asText(DEFAULT_MODEL), toolNames(context), counter());
        List<CopilotApi.NamedEvent> events = new ArrayList<>();
        List<List<CopilotApi.NamedEvent>> perChunk = new ArrayList<>();
        for (JsonNode chunk : up.chunks()) {
            perChunk.add(s.onChunk(chunk));
            events.addAll(perChunk.get(perChunk.size() - 1));
        }
        events.addAll(up.cut() ? s.fail(up.cutMessage()) : s.finish());
        return new Run(events, perChunk, s.notes());
    }

    static Supplier<String> counter() {
        AtomicInteger n = new AtomicInteger();
        return () -> "gen" + n.incrementAndGet();
    }

    /** A whole chat answer the way the route answers it: as its chunks, through the stream machine, folded into a message. */
    static ObjectNode folded(JsonNode completion, String requestedModel, Map<String, String> toolNames, List<String> notes) {
        var machine = new CopilotApi.Anthropic.ChatStreamToAnthropic(requestedModel, toolNames);
        var relay = new CopilotApi.Streaming.TranslatedRelay(machine, new CopilotApi.Serving.Exchange(), (name, data) -> { });
        var events = CopilotApi.Streaming.Relay.fold(CopilotApi.EventSource.whole(CopilotApi.Streaming.ChatChunks.of(completion), false), relay);
        notes.addAll(machine.notes());
        return CopilotApi.Anthropic.AnthropicEvents.message(events);
    }

    // ---- stream invariants ----

    /**
     * What SDKs and Claude Code rely on: data.type equals the event name; one message_start first; blocks with
     * contiguous indices from 0, one open at a time, deltas of the block's kind only into the open block; every
     * tool_use block with at least one input_json_delta whose joined JSON is an object; message_delta after all blocks
     * with stop_reason tool_use when a tool_use block was sent; one message_stop, last. A stream that breaks ends with
     * one error event and no message_stop.
     */
    static void assertWellFormed(List<CopilotApi.NamedEvent> events) {
        assertFalse(events.isEmpty(), "a stream sends at least one event");
        for (var e : events) assertEquals(e.name(), e.data().path("type").asText(), "data.type of " + e.name());
        boolean failed = events.get(events.size() - 1).name().equals("error");
        assertEquals(failed ? 1 : 0, events.stream().filter(e -> e.name().equals("error")).count(), "error events");
        if (!failed) assertEquals("message_start", events.get(0).name(), "first event");
        int next = 0;
        Integer open = null;
        String openType = null;
        StringBuilder toolJson = null;
        int toolDeltas = 0;
        boolean toolUse = false;
        boolean delta = false;
        int starts = 0;
        int stops = 0;
        for (int i = 0; i < events.size(); i++) {
            var e = events.get(i);
            JsonNode d = e.data();
            String where = "event " + i + " (" + e.name() + ")";
            assertEquals(0, stops, where + " comes after message_stop");
            switch (e.name()) {
                case "message_start" -> {
                    starts++;
                    assertEquals(0, i, "message_start must be first");
                    for (String f : List.of("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")) {
                        assertTrue(d.path("message").path("usage").path(f).isInt(), "message_start usage." + f);
                    }
                }
                case "content_block_start" -> {
                    assertTrue(open == null, where + ": block " + open + " is still open");
                    assertFalse(delta, where + ": block after message_delta");
                    assertEquals(next, d.path("index").asInt(-1), where + ": indices are contiguous from 0");
                    open = next++;
                    openType = d.path("content_block").path("type").asText();
                    toolJson = new StringBuilder();
                    toolDeltas = 0;
                    if (openType.equals("tool_use")) {
                        toolUse = true;
                        assertFalse(d.path("content_block").path("id").asText("").isEmpty(), where + ": tool_use id");
                        assertFalse(d.path("content_block").path("name").asText("").isEmpty(), where + ": tool_use name");
                    }
                }
                case "content_block_delta" -> {
                    assertTrue(open != null && open == d.path("index").asInt(-1), where + ": delta into a block that is not open");
                    String type = d.path("delta").path("type").asText();
                    String expectedType = switch (openType) {
                        case "text" -> "text_delta";
                        case "tool_use" -> "input_json_delta";
                        default -> type.equals("signature_delta") ? "signature_delta" : "thinking_delta";
                    };
                    assertEquals(expectedType, type, where + ": delta type in a " + openType + " block");
                    if (type.equals("input_json_delta")) {
                        toolJson.append(d.path("delta").path("partial_json").asText());
                        toolDeltas++;
                    }
                }
                case "content_block_stop" -> {
                    assertTrue(open != null && open == d.path("index").asInt(-1), where + ": stop of a block that is not open");
                    if (openType.equals("tool_use")) {
                        assertTrue(toolDeltas > 0, where + ": tool_use block without input_json_delta");
                        JsonNode input = CopilotApi.Json.tryParse(toolJson.toString()).orElse(null);
                        assertTrue(input != null && input.isObject(), where + ": tool input does not parse: " + toolJson);
                    }
                    open = null;
                }
                case "message_delta" -> {
                    assertFalse(delta, where + ": second message_delta");
                    assertTrue(open == null, where + ": block " + open + " still open");
                    delta = true;
                    assertTrue(d.path("usage").path("output_tokens").isInt(), where + ": usage.output_tokens");
                    assertTrue(d.path("delta").has("stop_sequence"), where + ": stop_sequence");
                    if (toolUse) assertEquals("tool_use", d.path("delta").path("stop_reason").asText(), where + ": stop_reason");
                    else assertFalse(d.path("delta").path("stop_reason").asText("").isEmpty(), where + ": stop_reason");
                }
                case "message_stop" -> {
                    assertTrue(delta, where + ": message_stop without message_delta");
                    stops++;
                }
                case "ping", "error" -> { }
                default -> fail(where + ": unknown event");
            }
        }
        assertTrue(starts <= 1, "message_start sent " + starts + " times");
        if (failed) {
            assertEquals(0, stops, "a broken stream must not end with message_stop");
        } else {
            assertEquals(1, starts, "message_start");
            assertEquals(1, stops, "message_stop");
            assertEquals("message_stop", events.get(events.size() - 1).name(), "last event");
        }
    }

    /** A chat request Copilot accepts: every assistant tool call answered by a tool message before the next turn. */
    static void assertChatRequestIsValid(JsonNode chat) {
        JsonNode messages = chat.path("messages");
        for (int i = 0; i < messages.size(); i++) {
            JsonNode m = messages.get(i);
            assertTrue(List.of("system", "user", "assistant", "tool").contains(m.path("role").asText()), "role of message " + i);
            if (!m.path("role").asText().equals("tool")) {
                JsonNode content = m.path("content");
                boolean hasContent = content.isTextual() ? !content.asText().isBlank() : content.isArray() && !content.isEmpty();
                assertTrue(hasContent || m.path("tool_calls").isArray(), "message " + i + " is empty");
            }
            for (JsonNode call : m.path("tool_calls")) {
                String id = call.path("id").asText();
                boolean answered = false;
                for (int j = i + 1; j < messages.size() && messages.get(j).path("role").asText().equals("tool"); j++) {
                    if (messages.get(j).path("tool_call_id").asText().equals(id)) answered = true;
                }
                if (i + 1 < messages.size()) assertTrue(answered, "tool call " + id + " of message " + i + " has no tool answer right after it");
                assertTrue(CopilotApi.Json.tryParse(call.path("function").path("arguments").asText()).isPresent(), "arguments of " + id);
                assertTrue(call.path("function").path("name").asText().length() <= 64, "name of " + id);
            }
            for (JsonNode part : m.path("content")) {
                assertFalse(part.has("cache_control"), "cache_control left in message " + i);
            }
        }
        for (JsonNode tool : chat.path("tools")) {
            assertEquals("function", tool.path("type").asText());
            assertTrue(tool.path("function").path("name").asText().matches("[A-Za-z0-9_-]{1,64}"), tool.toString());
            List<String> keys = new ArrayList<>();
            tool.path("function").fieldNames().forEachRemaining(keys::add);
            assertTrue(List.of("name", "description", "parameters").containsAll(keys), "unexpected tool keys " + keys);
        }
    }

    // ---- JSON helpers ----

    static final Pattern GENERATED_ID = Pattern.compile("(msg|toolu|call)_[A-Za-z0-9_]+");
    static final List<String> ID_KEYS = List.of("id", "tool_call_id", "tool_use_id");

    /** Ids replaced by placeholders in order of first appearance (keeping msg_/toolu_/call_), so links between ids are still compared. */
    static JsonNode placeholders(JsonNode node) {
        JsonNode copy = node.deepCopy();
        replaceIds(copy, new HashMap<>());
        return copy;
    }

    private static void replaceIds(JsonNode node, Map<String, String> seen) {
        if (node.isObject()) {
            ObjectNode o = (ObjectNode) node;
            List<String> keys = new ArrayList<>();
            o.fieldNames().forEachRemaining(keys::add);
            for (String k : keys) {
                JsonNode v = o.get(k);
                if (v.isTextual() && (ID_KEYS.contains(k) || GENERATED_ID.matcher(v.asText()).matches())) {
                    var m = GENERATED_ID.matcher(v.asText());
                    String kind = m.matches() ? m.group(1) + "_" : "";
                    o.put(k, seen.computeIfAbsent(v.asText(), x -> kind + "<id" + (seen.size() + 1) + ">"));
                } else {
                    replaceIds(v, seen);
                }
            }
        } else if (node.isArray()) {
            for (JsonNode v : node) replaceIds(v, seen);
        }
    }

    static void assertJson(JsonNode expected, JsonNode actual, String what) {
        JsonNode e = placeholders(expected);
        JsonNode a = placeholders(actual);
        if (!e.equals(a)) assertEquals(CopilotApi.Json.pretty(e), CopilotApi.Json.pretty(a), what);
    }

    static JsonNode eventsAsJson(List<CopilotApi.NamedEvent> events) {
        ArrayNode a = CopilotApi.Json.array();
        for (var e : events) a.addObject().put("event", e.name()).set("data", e.data());
        return a;
    }

    static List<JsonNode> readEvents(Path file) {
        List<JsonNode> out = new ArrayList<>();
        String name = null;
        for (String line : lines(file)) {
            if (line.startsWith("event:")) {
                name = line.substring(6).strip();
            } else if (line.startsWith("data:")) {
                ObjectNode e = CopilotApi.Json.object();
                e.put("event", name);
                e.set("data", json(line.substring(5).strip()));
                out.add(e);
                name = null;
            }
        }
        return out;
    }

    /** "name {json}" per line, for hand-written event lists in tests. */
    static List<CopilotApi.NamedEvent> events(String text) {
        List<CopilotApi.NamedEvent> out = new ArrayList<>();
        for (String line : text.split("\n")) {
            int space = line.indexOf(' ');
            out.add(new CopilotApi.NamedEvent(line.substring(0, space), (ObjectNode) json(line.substring(space + 1))));
        }
        return out;
    }

    static List<String> names(List<CopilotApi.NamedEvent> events) {
        return events.stream().map(CopilotApi.NamedEvent::name).collect(Collectors.toList());
    }

    static CopilotApi.Chat.ModelLimits limits(Path dir, JsonNode request) {
        Path model = dir.resolve("model.json");
        return Files.exists(model) ? CopilotApi.Chat.ModelLimits.from(read(model))
            : CopilotApi.Chat.ModelLimits.unknown(request.path("model").asText());
    }

    static JsonNode context(Path dir) {
        Path f = dir.resolve("context.json");
        return Files.exists(f) ? read(f) : CopilotApi.Json.object();
    }

    static Map<String, String> toolNames(JsonNode context) {
        Map<String, String> m = new HashMap<>();
        context.path("tool_names").properties().forEach(e -> m.put(e.getKey(), e.getValue().asText()));
        return m;
    }

    static List<String> expectedNotes(Path dir) {
        Path f = dir.resolve("expected-notes.json");
        List<String> notes = new ArrayList<>();
        if (Files.exists(f)) read(f).forEach(n -> notes.add(n.asText()));
        return notes;
    }

    static JsonNode read(Path file) {
        try {
            return CopilotApi.JSON.readTree(file.toFile());
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + file, e);
        }
    }

    static List<String> lines(Path file) {
        try {
            return Files.readAllLines(file);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static JsonNode json(String text) {
        return CopilotApi.Json.tryParse(text).orElseThrow(() -> new IllegalArgumentException("not JSON: " + text));
    }
}
