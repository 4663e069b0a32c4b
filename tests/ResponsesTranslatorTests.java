package copilotapi;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/**
 * Fixture-driven tests of {@link ResponsesTranslators}, plus invariant checks on every event and chunk stream.
 *
 * <p>Each directory under {@code fixtures/responses/} is one case; which directions run depends on the files present:
 * <pre>
 *   responses-request.json                  → expected-chat-request.json (+ .notes.txt)      ResponsesToChat.request
 *   responses-request.json + upstream-chat.json → expected-response.json                    ChatStreamToResponses, folded
 *   responses-request.json + upstream.sse (+ upstream-error.txt) → expected.events          ChatStreamToResponses
 *   chat-request.json                       → expected-responses-request.json (+ .notes.txt) ChatToResponsesRequest
 *   upstream-response.json                  → expected-chat.json                             ResponsesStreamToChat, folded
 *   upstream.events                         → expected.sse (+ expected-failure.txt)          ResponsesStreamToChat
 * </pre>
 * An expected request file of the form {@code {"error": {"status", "param", "message_contains"}}} expects an ApiError.
 * Ids and timestamps come from a deterministic {@link TestClock}, so goldens compare exactly. Run with
 * {@code -Dbless=true} to (re)write goldens, then review the diff by hand.
 */
class ResponsesTranslatorTests {
    static final Path FIXTURES = CopilotApiTests.fixtures("responses");
    static final boolean BLESS = Boolean.getBoolean("bless");
    static final long NOW = 1_700_000_000L;

    /** Ids are prefix + "t" + a counter per prefix; the clock stands still. */
    static final class TestClock implements CopilotApi.Chat.IdClock {
        private final Map<String, Integer> counters = new HashMap<>();

        @Override
        public String id(String prefix) {
            return prefix + "t" + counters.merge(prefix, 1, Integer::sum);
        }

        @Override
        public long epochSeconds() {
            return NOW;
        }
    }

    // ==== Fixtures ====

    @TestFactory
    Stream<DynamicTest> fixtures() throws IOException {
        List<DynamicTest> tests = new ArrayList<>();
        try (Stream<Path> dirs = Files.list(FIXTURES)) {
            for (Path dir : dirs.filter(Files::isDirectory).sorted().toList()) {
                String name = dir.getFileName().toString();
                if (has(dir, "responses-request.json") && (has(dir, "expected-chat-request.json") || BLESS)) {
                    tests.add(DynamicTest.dynamicTest(name + ": Responses request to chat", () -> responsesRequestToChat(dir)));
                }
                if (has(dir, "upstream-chat.json")) tests.add(DynamicTest.dynamicTest(name + ": chat answer to Responses", () -> chatAnswerToResponses(dir)));
                if (has(dir, "upstream.sse")) tests.add(DynamicTest.dynamicTest(name + ": chat stream to Responses events", () -> chatStreamToResponses(dir)));
                if (has(dir, "chat-request.json") && (has(dir, "expected-responses-request.json") || BLESS)) {
                    tests.add(DynamicTest.dynamicTest(name + ": chat request to Responses", () -> chatRequestToResponses(dir)));
                }
                if (has(dir, "upstream-response.json")) tests.add(DynamicTest.dynamicTest(name + ": Responses answer to chat", () -> responsesAnswerToChat(dir)));
                if (has(dir, "upstream.events")) tests.add(DynamicTest.dynamicTest(name + ": Responses events to chat chunks", () -> responsesStreamToChat(dir)));
            }
        }
        assertFalse(tests.isEmpty(), "no fixtures under " + FIXTURES);
        return tests.stream();
    }

    void responsesRequestToChat(Path dir) {
        ObjectNode in = (ObjectNode) json(dir, "responses-request.json");
        expectRequest(dir, "expected-chat-request", () -> CopilotApi.Responses.ResponsesToChat.request(in));
    }

    void chatRequestToResponses(Path dir) {
        ObjectNode in = (ObjectNode) json(dir, "chat-request.json");
        expectRequest(dir, "expected-responses-request", () -> CopilotApi.Responses.ChatToResponsesRequest.request(in));
    }

    void chatAnswerToResponses(Path dir) {
        ObjectNode out = folded(json(dir, "upstream-chat.json"), (ObjectNode) json(dir, "responses-request.json"), new TestClock());
        compareJson(dir, "expected-response.json", out);
    }

    void chatStreamToResponses(Path dir) {
        List<ObjectNode> events = runChatStream(dir, new TestClock());
        checkResponsesEvents(events);
        compareText(dir, "expected.events", eventsText(events));
    }

    /** A whole chat answer the way the route answers it: as its chunks, through the stream machine, the terminal event's response. */
    static ObjectNode folded(JsonNode completion, ObjectNode request, CopilotApi.Chat.IdClock clock) {
        var machine = new CopilotApi.Routes.ResponsesRoutes.AsTranslation(new CopilotApi.Responses.ChatStreamToResponses(request, clock), r -> { });
        var relay = new CopilotApi.Streaming.TranslatedRelay(machine, new CopilotApi.Serving.Exchange(), (name, data) -> { });
        var events = CopilotApi.Streaming.Relay.fold(CopilotApi.EventSource.whole(CopilotApi.Streaming.ChatChunks.of(completion), false), relay);
        return CopilotApi.Responses.ResponseEvents.response(events);
    }

    /** A whole Responses answer the way the chat route answers it: as its events, through the stream machines, folded into a completion. */
    static ObjectNode foldedToChat(JsonNode response, String requestedModel) {
        var events = new CopilotApi.ResponsesAsChat(CopilotApi.EventSource.whole(CopilotApi.Responses.ResponseEvents.of(response), true),
            new CopilotApi.Responses.ResponsesStreamToChat(requestedModel, true, new TestClock()));
        var relay = new CopilotApi.Streaming.ChatRelay(new CopilotApi.Chat.ChatStreamNormalizer(true, true), new CopilotApi.Serving.Exchange(),
            new CopilotApi.Operator.SubagentPrompts(1, java.time.Duration.ZERO).reader());
        return CopilotApi.Streaming.ChatChunks.completion(CopilotApi.Streaming.Relay.fold(events, relay));
    }

    void responsesAnswerToChat(Path dir) {
        ObjectNode out = foldedToChat(json(dir, "upstream-response.json"), requestedModel(dir));
        compareJson(dir, "expected-chat.json", out);
    }

    void responsesStreamToChat(Path dir) {
        StreamResult r = runResponsesStream(dir, new TestClock());
        checkChatChunks(r.chunks(), r.failure().isEmpty());
        compareText(dir, "expected.sse", chunksText(r.chunks()));
        if (r.failure().isPresent() || has(dir, "expected-failure.txt") || BLESS) {
            compareText(dir, "expected-failure.txt", r.failure().map(f -> f + "\n").orElse(""));
        }
    }

    // ==== Two-turn round trips ====

    /**
     * Inbound Responses, chat-only model: turn 1's output items (from the answer and from the stream alike) sent back
     * with the tool result must give the chat model its own reasoning signature, text and tool call back.
     */
    @Test
    void twoTurnToolConversationFromResponsesClient() {
        Path dir = FIXTURES.resolve("roundtrip-responses-tools");
        ObjectNode turn1 = (ObjectNode) json(dir, "responses-request.json");
        JsonNode upstream = json(dir, "upstream-chat.json");
        ObjectNode answer = folded(upstream, turn1, new TestClock());
        List<ObjectNode> events = runChatStream(dir, new TestClock());
        checkResponsesEvents(events);
        JsonNode streamed = events.get(events.size() - 1).path("response");
        String expected = null;
        for (JsonNode output : List.of(answer.path("output"), streamed.path("output"))) {
            ObjectNode turn2 = turn1.deepCopy();
            ArrayNode input = turn2.putArray("input");
            input.addAll((ArrayNode) turn1.path("input"));
            input.addAll((ArrayNode) output);
            input.addAll((ArrayNode) json(dir, "turn2-input.json"));
            ObjectNode chat = CopilotApi.Responses.ResponsesToChat.request(turn2).body();
            JsonNode assistant = chat.path("messages").get(2);
            JsonNode upstreamMessage = upstream.path("choices").get(0).path("message");
            assertEquals(upstreamMessage.path("reasoning_opaque"), assistant.path("reasoning_opaque"), "signature must come back verbatim");
            assertEquals(upstreamMessage.path("reasoning_text"), assistant.path("reasoning_text"));
            assertEquals(upstream.path("choices").get(1).path("message").path("tool_calls").get(0).path("id"),
                assistant.path("tool_calls").get(0).path("id"));
            String actual = CopilotApi.Json.pretty(chat) + "\n";
            if (expected == null) {
                compareText(dir, "expected-turn2-chat-request.json", actual);
                expected = actual;
            } else {
                assertEquals(expected, actual, "the streamed output must round-trip exactly like the answer's");
            }
        }
    }

    /**
     * Inbound chat (or Anthropic via chat), responses-only model: the assistant message rebuilt from turn 1 (answer
     * or chunks) sent back with the tool result must restore the reasoning item's id and encrypted content.
     */
    @Test
    void twoTurnToolConversationFromChatClient() {
        Path dir = FIXTURES.resolve("roundtrip-chat-tools");
        ObjectNode turn1 = (ObjectNode) json(dir, "chat-request.json");
        JsonNode upstream = json(dir, "upstream-response.json");
        JsonNode fromAnswer = foldedToChat(upstream, requestedModel(dir)).path("choices").get(0).path("message");
        StreamResult streamed = runResponsesStream(dir, new TestClock());
        checkChatChunks(streamed.chunks(), true);
        ObjectNode fromStream = accumulate(streamed.chunks());
        String expected = null;
        for (JsonNode assistant : List.of(fromAnswer, fromStream)) {
            ObjectNode turn2 = turn1.deepCopy();
            ArrayNode messages = turn2.putArray("messages");
            messages.addAll((ArrayNode) turn1.path("messages"));
            messages.add(assistant);
            messages.addAll((ArrayNode) json(dir, "turn2-messages.json"));
            ObjectNode body = CopilotApi.Responses.ChatToResponsesRequest.request(turn2).body();
            JsonNode reasoning = body.path("input").get(1);
            JsonNode upstreamReasoning = upstream.path("output").get(0);
            assertEquals("reasoning", reasoning.path("type").asText());
            assertEquals(upstreamReasoning.path("id"), reasoning.path("id"));
            assertEquals(upstreamReasoning.path("encrypted_content"), reasoning.path("encrypted_content"));
            String actual = CopilotApi.Json.pretty(body) + "\n";
            if (expected == null) {
                compareText(dir, "expected-turn2-responses-request.json", actual);
                expected = actual;
            } else {
                assertEquals(expected, actual, "the streamed chunks must round-trip exactly like the answer");
            }
        }
    }

    /** The lead records token counts for every request, so usage is kept even when the client's chunks do not carry it. */
    @Test
    void usageIsKeptWhenTheClientDidNotAskForIt() {
        Path dir = FIXTURES.resolve("incomplete-max-tokens");
        assertFalse(json(dir, "chat-request.json").has("stream_options"));
        var t = new CopilotApi.Responses.ResponsesStreamToChat("gpt-5.1-codex", false, new TestClock());
        List<ObjectNode> chunks = new ArrayList<>();
        for (CopilotApi.SseEvent e : sse(dir, "upstream.events")) chunks.addAll(t.onEvent(e.event(), parse(e.data())));
        assertTrue(chunks.stream().noneMatch(c -> c.has("usage")), "no usage chunk unless asked");
        assertEquals(8, t.usage().orElseThrow().path("prompt_tokens").asInt());
        assertEquals(16, t.usage().orElseThrow().path("completion_tokens").asInt());
    }

    /** The opaque encoding is a bijection on what it carries, concatenations included. */
    @Test
    void reasoningOpaqueRoundTrips() {
        String one = CopilotApi.Responses.ReasoningOpaque.encode("rs_a:b%c", "gAAAAB-x_y==");
        String two = CopilotApi.Responses.ReasoningOpaque.encode("rs_2", "ZW5j");
        var decoded = CopilotApi.Responses.ReasoningOpaque.decode(one + two);
        assertEquals(2, decoded.size());
        assertEquals("rs_a:b%c", decoded.get(0).id());
        assertEquals("gAAAAB-x_y==", decoded.get(0).encryptedContent());
        assertEquals("rs_2", decoded.get(1).id());
        assertEquals("ZW5j", decoded.get(1).encryptedContent());
        assertTrue(CopilotApi.Responses.ReasoningOpaque.decode("c2lnbmF0dXJl").isEmpty(), "a Claude signature is not an encoding");
        String signature = "c2lnbmF0dXJl";
        assertEquals(Optional.of(signature), CopilotApi.Responses.ReasoningOpaque.unwrapChat(CopilotApi.Responses.ReasoningOpaque.wrapChat(signature)));
        assertEquals(Optional.empty(), CopilotApi.Responses.ReasoningOpaque.unwrapChat("gAAAAB-openai"));
    }

    @Test
    void customToolInputSurvivesBothWays() {
        String patch = "*** Begin Patch\n*** Add File: a.txt\n+\"quoted\" \\ back\n*** End Patch";
        assertEquals(patch, CopilotApi.Responses.CustomTools.input(CopilotApi.Responses.CustomTools.arguments(patch)));
        assertEquals("not json", CopilotApi.Responses.CustomTools.input("not json"));
        assertEquals("x", CopilotApi.Responses.CustomTools.input("{\"patch\":\"x\"}"));
    }

    // ==== The checkers themselves must catch broken streams ====

    @Test
    void eventCheckerRejectsDeltaBeforeItsItem() {
        List<ObjectNode> events = runChatStream(FIXTURES.resolve("tool-call"), new TestClock());
        ObjectNode delta = events.remove(indexOf(events, "response.function_call_arguments.delta"));
        events.add(indexOf(events, "response.output_item.added"), delta);
        renumber(events);
        assertThrows(AssertionError.class, () -> checkResponsesEvents(events));
    }

    @Test
    void eventCheckerRejectsDeltaAfterItsItemIsDone() {
        List<ObjectNode> events = runChatStream(FIXTURES.resolve("tool-call"), new TestClock());
        ObjectNode delta = events.remove(indexOf(events, "response.function_call_arguments.delta"));
        events.add(indexOf(events, "response.output_item.done") + 1, delta);
        renumber(events);
        assertThrows(AssertionError.class, () -> checkResponsesEvents(events));
    }

    @Test
    void eventCheckerRejectsSequenceGapsAndTwoTerminals() {
        List<ObjectNode> gap = runChatStream(FIXTURES.resolve("text"), new TestClock());
        for (int i = 4; i < gap.size(); i++) gap.get(i).put("sequence_number", i + 1);
        assertThrows(AssertionError.class, () -> checkResponsesEvents(gap));
        List<ObjectNode> twice = runChatStream(FIXTURES.resolve("text"), new TestClock());
        twice.add(twice.get(twice.size() - 1).deepCopy().put("sequence_number", twice.size()));
        assertThrows(AssertionError.class, () -> checkResponsesEvents(twice));
    }

    @Test
    void chunkCheckerRejectsMissingRole() {
        List<ObjectNode> chunks = runResponsesStream(FIXTURES.resolve("tool-call"), new TestClock()).chunks();
        ((ObjectNode) chunks.get(0).path("choices").get(0).path("delta")).remove("role");
        assertThrows(AssertionError.class, () -> checkChatChunks(chunks, true));
    }

    @Test
    void chunkCheckerRejectsIncompleteFirstFragment() {
        List<ObjectNode> chunks = runResponsesStream(FIXTURES.resolve("tool-call"), new TestClock()).chunks();
        ObjectNode first = (ObjectNode) chunks.get(0).path("choices").get(0).path("delta").path("tool_calls").get(0);
        ((ObjectNode) first.path("function")).remove("name");
        assertThrows(AssertionError.class, () -> checkChatChunks(chunks, true));
    }

    @Test
    void chunkCheckerRejectsContentAfterTheFinish() {
        List<ObjectNode> chunks = runResponsesStream(FIXTURES.resolve("text"), new TestClock()).chunks();
        int finish = chunks.size() - 2;
        assertEquals("stop", chunks.get(finish).path("choices").get(0).path("finish_reason").asText());
        chunks.add(finish + 1, chunks.remove(finish - 1));
        assertThrows(AssertionError.class, () -> checkChatChunks(chunks, true));
    }

    // ==== Invariants ====

    /**
     * Responses events: sequence numbers 0..n-1; created then in_progress first; items added in output order; every
     * item event names an added, not yet done item with the matching id (and only one item open at a time); parts
     * added before their deltas; exactly one terminal event, last, whose output matches the items.
     */
    static void checkResponsesEvents(List<ObjectNode> events) {
        assertTrue(events.size() >= 3, "too few events");
        assertEquals("response.created", events.get(0).path("type").asText());
        assertEquals("response.in_progress", events.get(1).path("type").asText());
        String responseId = events.get(0).path("response").path("id").asText();
        Map<Integer, String> itemIds = new HashMap<>();
        Map<Integer, JsonNode> doneItems = new HashMap<>();
        Set<Integer> open = new HashSet<>();
        Set<String> openParts = new HashSet<>();
        int terminals = 0;
        for (int i = 0; i < events.size(); i++) {
            JsonNode e = events.get(i);
            String type = e.path("type").asText();
            assertEquals(i, e.path("sequence_number").asInt(-1), "sequence_number of event " + i + " (" + type + ")");
            assertTrue(terminals == 0, type + " after the terminal event");
            if (e.has("response")) assertEquals(responseId, e.path("response").path("id").asText(), "response id changed");
            switch (type) {
                case "response.created", "response.in_progress" -> assertTrue(i < 2, type + " late");
                case "response.completed", "response.incomplete", "response.failed" -> {
                    terminals++;
                    checkTerminal(type, e.path("response"), itemIds, doneItems, open);
                }
                case "response.output_item.added" -> {
                    int index = e.path("output_index").asInt(-1);
                    assertEquals(itemIds.size(), index, "items must be added in output order");
                    assertTrue(open.isEmpty(), "item " + index + " added while another is open");
                    String id = e.path("item").path("id").asText("");
                    assertFalse(id.isEmpty(), "item without id");
                    itemIds.put(index, id);
                    open.add(index);
                }
                case "response.output_item.done" -> {
                    int index = e.path("output_index").asInt(-1);
                    assertTrue(open.remove(index), "done for item " + index + " that is not open");
                    assertEquals(itemIds.get(index), e.path("item").path("id").asText(), "item id changed at done");
                    assertTrue(openParts.stream().noneMatch(p -> p.startsWith(index + "/")), "item done with a part still open");
                    doneItems.put(index, e.path("item"));
                }
                default -> checkItemEvent(type, e, itemIds, open, openParts);
            }
        }
        assertEquals(1, terminals, "exactly one terminal event");
    }

    private static void checkItemEvent(String type, JsonNode e, Map<Integer, String> itemIds, Set<Integer> open, Set<String> openParts) {
        int index = e.path("output_index").asInt(-1);
        assertTrue(open.contains(index), type + " for item " + index + " that is not open");
        assertEquals(itemIds.get(index), e.path("item_id").asText(), type + " names the wrong item");
        String part = index + "/" + (e.has("summary_index") ? "s" + e.path("summary_index").asInt() : "c" + e.path("content_index").asInt());
        if (type.endsWith("part.added")) {
            assertTrue(openParts.add(part), "part added twice: " + part);
        } else if (type.endsWith("part.done")) {
            assertTrue(openParts.remove(part), "part done without being added: " + part);
        } else if (type.startsWith("response.output_text.") || type.startsWith("response.refusal.") || type.startsWith("response.reasoning_summary_text.")) {
            assertTrue(openParts.contains(part), type + " outside an open part " + part);
        }
    }

    private static void checkTerminal(String type, JsonNode response, Map<Integer, String> itemIds, Map<Integer, JsonNode> doneItems, Set<Integer> open) {
        String status = response.path("status").asText();
        switch (type) {
            case "response.completed" -> assertEquals("completed", status);
            case "response.incomplete" -> {
                assertEquals("incomplete", status);
                assertTrue(response.path("incomplete_details").path("reason").isTextual(), "incomplete without a reason");
            }
            default -> {
                assertEquals("failed", status);
                assertTrue(response.path("error").path("message").isTextual(), "failed without an error message");
            }
        }
        JsonNode output = response.path("output");
        if (!type.equals("response.failed")) {
            assertTrue(open.isEmpty(), "terminal event with items still open");
            assertEquals(doneItems.size(), output.size(), "terminal output must list every item");
        }
        for (int k = 0; k < output.size(); k++) {
            assertEquals(itemIds.get(k), output.get(k).path("id").asText(), "terminal output item " + k);
            if (doneItems.containsKey(k)) assertEquals(doneItems.get(k), output.get(k), "terminal output item " + k + " differs from its done event");
        }
    }

    /**
     * Chat chunks: role "assistant" on the first delta and never again; one id throughout; a tool call's first
     * fragment has id, type "function", a name and arguments, later ones neither id nor name; finish_reason exactly
     * once, on the last chunk with choices (a usage chunk with empty choices may follow).
     */
    static void checkChatChunks(List<ObjectNode> chunks, boolean mustFinish) {
        String id = chunks.isEmpty() ? null : chunks.get(0).path("id").asText();
        boolean roleSeen = false;
        int finishes = 0;
        Set<Integer> toolIndices = new HashSet<>();
        for (int i = 0; i < chunks.size(); i++) {
            JsonNode c = chunks.get(i);
            assertEquals("chat.completion.chunk", c.path("object").asText());
            assertEquals(id, c.path("id").asText(), "chunk id changed");
            if (c.path("choices").isEmpty()) {
                assertTrue(c.path("usage").isObject(), "a chunk without choices must carry usage");
                assertEquals(1, finishes, "usage chunk before the finish");
                continue;
            }
            assertEquals(0, finishes, "chunk after the finish_reason");
            JsonNode choice = c.path("choices").get(0);
            assertEquals(1, c.path("choices").size());
            assertEquals(0, choice.path("index").asInt(-1));
            JsonNode delta = choice.path("delta");
            if (!roleSeen) assertEquals("assistant", delta.path("role").asText(), "role missing on the first delta");
            else assertFalse(delta.has("role"), "role repeated");
            roleSeen = true;
            if (choice.path("finish_reason").isTextual()) finishes++;
            for (JsonNode tc : delta.path("tool_calls")) {
                int index = tc.path("index").asInt(-1);
                assertTrue(index >= 0, "tool call without index");
                if (toolIndices.add(index)) {
                    assertEquals(toolIndices.size() - 1, index, "tool call indices must count from 0");
                    assertFalse(tc.path("id").asText("").isEmpty(), "first fragment without id");
                    assertEquals("function", tc.path("type").asText(), "first fragment without type");
                    assertFalse(tc.path("function").path("name").asText("").isEmpty(), "first fragment without name");
                    assertTrue(tc.path("function").path("arguments").isTextual(), "first fragment without arguments");
                } else {
                    assertFalse(tc.has("id") || tc.path("function").has("name"), "id or name repeated on a later fragment");
                }
            }
        }
        if (mustFinish) assertEquals(1, finishes, "exactly one finish_reason");
        else assertEquals(0, finishes, "a failed stream must not finish");
    }

    // ==== Running streams ====

    record StreamResult(List<ObjectNode> chunks, Optional<String> failure) {}

    static List<ObjectNode> runChatStream(Path dir, TestClock clock) {
        var t = new CopilotApi.Responses.ChatStreamToResponses((ObjectNode) json(dir, "responses-request.json"), clock);
        List<ObjectNode> events = new ArrayList<>();
        for (CopilotApi.SseEvent e : sse(dir, "upstream.sse")) {
            if (e.data().equals("[DONE]")) break;
            events.addAll(t.onChunk(parse(e.data())));
        }
        if (has(dir, "upstream-error.txt")) events.addAll(t.fail(read(dir, "upstream-error.txt").strip()));
        else events.addAll(t.finish());
        assertTrue(t.finish().isEmpty(), "nothing may follow the terminal event");
        return events;
    }

    static StreamResult runResponsesStream(Path dir, TestClock clock) {
        JsonNode request = has(dir, "chat-request.json") ? json(dir, "chat-request.json") : CopilotApi.Json.object();
        boolean usage = request.path("stream_options").path("include_usage").asBoolean(false);
        var t = new CopilotApi.Responses.ResponsesStreamToChat(requestedModel(dir), usage, clock);
        List<ObjectNode> chunks = new ArrayList<>();
        for (CopilotApi.SseEvent e : sse(dir, "upstream.events")) chunks.addAll(t.onEvent(e.event(), parse(e.data())));
        chunks.addAll(t.finish());
        return new StreamResult(chunks, t.failure());
    }

    /** What openai-node's finalChatCompletion() makes of the chunks, with reasoning fields concatenated. */
    static ObjectNode accumulate(List<ObjectNode> chunks) {
        ObjectNode m = CopilotApi.Json.object();
        StringBuilder content = new StringBuilder();
        StringBuilder reasoning = new StringBuilder();
        StringBuilder opaque = new StringBuilder();
        ArrayNode calls = CopilotApi.Json.array();
        for (ObjectNode c : chunks) {
            JsonNode d = c.path("choices").path(0).path("delta");
            if (d.has("role")) m.put("role", d.path("role").asText());
            content.append(d.path("content").asText(""));
            reasoning.append(d.path("reasoning_text").asText(""));
            opaque.append(d.path("reasoning_opaque").asText(""));
            for (JsonNode tc : d.path("tool_calls")) {
                int i = tc.path("index").asInt();
                if (i == calls.size()) calls.add(tc.deepCopy());
                else {
                    ObjectNode fn = (ObjectNode) calls.get(i).path("function");
                    fn.put("arguments", fn.path("arguments").asText() + tc.path("function").path("arguments").asText(""));
                }
            }
        }
        if (content.length() > 0) m.put("content", content.toString());
        else m.putNull("content");
        if (reasoning.length() > 0) m.put("reasoning_text", reasoning.toString());
        if (opaque.length() > 0) m.put("reasoning_opaque", opaque.toString());
        for (JsonNode tc : calls) ((ObjectNode) tc).remove("index");
        if (!calls.isEmpty()) m.set("tool_calls", calls);
        return m;
    }

    // ==== Files ====

    static String requestedModel(Path dir) {
        return has(dir, "chat-request.json") ? json(dir, "chat-request.json").path("model").asText(null) : null;
    }

    static void expectRequest(Path dir, String base, java.util.function.Supplier<CopilotApi.Chat.Translated> run) {
        JsonNode expected = has(dir, base + ".json") ? json(dir, base + ".json") : null;
        if (expected != null && expected.has("error") && expected.size() == 1) {
            CopilotApi.ApiError e = assertThrows(CopilotApi.ApiError.class, run::get);
            JsonNode want = expected.path("error");
            assertEquals(want.path("status").asInt(), e.status());
            assertEquals(want.path("param").asText(null), e.param());
            assertTrue(e.getMessage().contains(want.path("message_contains").asText()), "message: " + e.getMessage());
            return;
        }
        CopilotApi.Chat.Translated t = run.get();
        compareJson(dir, base + ".json", t.body());
        compareText(dir, base + ".notes.txt", t.notes().isEmpty() ? "" : String.join("\n", t.notes()) + "\n");
    }

    static void compareJson(Path dir, String file, JsonNode actual) {
        compareText(dir, file, CopilotApi.Json.pretty(actual) + "\n");
    }

    /** Compares with the golden file (an absent golden means empty text); -Dbless=true writes it instead. */
    static void compareText(Path dir, String file, String actual) {
        Path p = dir.resolve(file);
        try {
            if (BLESS) {
                if (actual.isEmpty()) Files.deleteIfExists(p);
                else Files.writeString(p, actual);
                return;
            }
            String expected = Files.exists(p) ? Files.readString(p) : "";
            assertEquals(expected, actual, dir.getFileName() + "/" + file);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static String eventsText(List<ObjectNode> events) {
        StringBuilder b = new StringBuilder();
        for (ObjectNode e : events) b.append("event: ").append(e.path("type").asText()).append("\ndata: ").append(CopilotApi.Json.write(e)).append("\n\n");
        return b.toString();
    }

    static String chunksText(List<ObjectNode> chunks) {
        StringBuilder b = new StringBuilder();
        for (ObjectNode c : chunks) b.append("data: ").append(CopilotApi.Json.write(c)).append("\n\n");
        return b.toString();
    }

    static List<CopilotApi.SseEvent> sse(Path dir, String file) {
        var reader = new CopilotApi.SseReader(new ByteArrayInputStream(read(dir, file).getBytes(StandardCharsets.UTF_8)));
        List<CopilotApi.SseEvent> out = new ArrayList<>();
        try {
            for (CopilotApi.SseEvent e = reader.next(); e != null; e = reader.next()) out.add(e);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out;
    }

    static boolean has(Path dir, String file) {
        return Files.exists(dir.resolve(file));
    }

    static String read(Path dir, String file) {
        try {
            return Files.readString(dir.resolve(file));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static JsonNode json(Path dir, String file) {
        return parse(read(dir, file));
    }

    static JsonNode parse(String text) {
        try {
            return CopilotApi.JSON.readTree(text);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static int indexOf(List<ObjectNode> events, String type) {
        for (int i = 0; i < events.size(); i++) if (events.get(i).path("type").asText().equals(type)) return i;
        fail("no " + type);
        return -1;
    }

    static void renumber(List<ObjectNode> events) {
        for (int i = 0; i < events.size(); i++) events.get(i).put("sequence_number", i);
    }
}
