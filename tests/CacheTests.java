package copilotapi;

import static copilotapi.CopilotApiTests.dataLines;
import static copilotapi.CopilotApiTests.json;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.net.http.HttpResponse;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;

/**
 * Cache friendliness (issue 18): a conversation re-sent with one more turn reaches Copilot with a byte-identical prefix
 * on every route, translated ones included, so Copilot's prompt cache can reuse it; and the cached-token count Copilot
 * reports reaches the client in its API's usage object. Each test replays a four-turn conversation (a long system
 * prompt, two tools, thinking asked for, a prompt with an image, a tool call and its result, a second prompt, a second
 * call and result) the way a client does, streamed and not, against a stub whose prompt cache (StubUpstream.promptCache) counts the reused prefix.
 */
class CacheTests extends CopilotApiTests.WithHarness {

    @Override
    CopilotApiTests.Harness harness() throws IOException {
        return new CopilotApiTests.Harness(StubUpstream.start().promptCache(true), Map.of(), o -> { });
    }

    @Test
    void chatCompletionsOnAChatModelReSendTheSamePrefix() throws Exception {
        replayBoth(Client.CHAT, "gpt-4.1", Upstream.CHAT);
    }

    @Test
    void chatCompletionsOnAResponsesOnlyModelReSendTheSamePrefix() throws Exception {
        replayBoth(Client.CHAT, "gpt-5.1-codex", Upstream.RESPONSES);
    }

    @Test
    void nativeMessagesOnClaudeReSendTheSamePrefixAndKeepTheCacheMarkers() throws Exception {
        replayBoth(Client.MESSAGES, "claude-sonnet-4.5", Upstream.MESSAGES);
    }

    @Test
    void messagesOnAChatModelReSendTheSamePrefix() throws Exception {
        replayBoth(Client.MESSAGES, "gpt-4.1", Upstream.CHAT);
    }

    @Test
    void messagesOnAResponsesOnlyModelReSendTheSamePrefix() throws Exception {
        replayBoth(Client.MESSAGES, "gpt-5.1-codex", Upstream.RESPONSES);
    }

    @Test
    void nativeResponsesReSendTheSamePrefix() throws Exception {
        replayBoth(Client.RESPONSES, "gpt-5.1-codex", Upstream.RESPONSES);
    }

    @Test
    void responsesChainedByPreviousResponseIdReachCopilotWithTheSamePrefix() throws Exception {
        replayBoth(Client.CHAINED_RESPONSES, "gpt-5.1-codex", Upstream.RESPONSES);
    }

    /**
     * A client that sends every item back without an id (the model's reasoning, function calls and messages as well as
     * outputs and prompts). An id copilot-api has to give such an item must come out the same each time, or the first
     * one breaks the prefix.
     */
    @Test
    void nativeResponsesWithItemsSentWithoutIdsReSendTheSamePrefix() throws Exception {
        replayBoth(Client.RESPONSES_WITHOUT_IDS, "gpt-5.1-codex", Upstream.RESPONSES);
    }

    @Test
    void responsesOnAChatModelWithItemsSentWithoutIdsReSendTheSamePrefix() throws Exception {
        replayBoth(Client.RESPONSES_WITHOUT_IDS, "gpt-4.1", Upstream.CHAT);
    }

    @Test
    void chatCompletionsOnClaudeReSendTheSamePrefix() throws Exception {
        replayBoth(Client.CHAT, "claude-sonnet-4.5", Upstream.CHAT);
    }

    @Test
    void responsesOnAChatModelReSendTheSamePrefix() throws Exception {
        replayBoth(Client.RESPONSES, "gpt-4.1", Upstream.CHAT);
    }

    /**
     * The stub's cache is explicit on /v1/messages, as Anthropic's: without cache_control markers nothing is cached
     * there (so the native test above fails if copilot-api drops the client's markers), while the same conversation
     * translated for a chat model is cached all the same.
     */
    @Test
    void withoutCacheMarkersTheNativeRouteCachesNothingWhileATranslatedOneStillCaches() throws Exception {
        for (String model : List.of("claude-sonnet-4.5", "gpt-4.1")) {
            h.stub.clear();
            Conversation c = new MessagesConversation(Client.MESSAGES.path, model, false, "unmarked on " + model).unmarked();
            List<Long> cached = new ArrayList<>();
            for (String next : List.of(TOOL_RESULT, SECOND_PROMPT, TOOL_RESULT)) {
                cached.add(c.send(h).cached());
                c.add(next);
            }
            cached.add(c.send(h).cached());
            assertTrue(h.stub.requests().stream().noneMatch(r -> r.body().contains("cache_control")), c.label + ": no markers were sent");
            if (model.startsWith("claude")) assertEquals(List.of(0L, 0L, 0L, 0L), cached, c.label);
            else assertTrue(cached.subList(1, 4).stream().allMatch(n -> n > 0), c.label + ": " + cached);
        }
    }

    /** The stub's counting rule and the test's byte reader, on their own. */
    @Test
    void theStubCountsWholeStepsOfTheSharedPrefixAndRawReadsTheBytesAsSent() throws Exception {
        assertEquals(0, StubUpstream.cachedTokensOf(4 * 1023 + 3));
        assertEquals(1024, StubUpstream.cachedTokensOf(4 * 1024));
        assertEquals(1024, StubUpstream.cachedTokensOf(4 * 1151));
        assertEquals(1152, StubUpstream.cachedTokensOf(4 * 1152));
        JsonNode earlier = json("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}");
        JsonNode later = json("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}]}");
        StubUpstream.Prompt before = StubUpstream.Prompt.of("/chat/completions", earlier);
        assertEquals(before.text().length(), before.reusableBy(StubUpstream.Prompt.of("/chat/completions", later)), "chat caches automatically");
        JsonNode marked = json(later.toString().replace("\"content\":\"a\"", "\"content\":[{\"type\":\"text\",\"text\":\"a\",\"cache_control\":{\"type\":\"ephemeral\"}}]"));
        JsonNode unmarked = json(later.toString().replace("\"content\":\"a\"", "\"content\":[{\"type\":\"text\",\"text\":\"a\"}]"));
        StubUpstream.Prompt withMarker = StubUpstream.Prompt.of("/v1/messages", marked);
        assertEquals(0, withMarker.reusableBy(StubUpstream.Prompt.of("/v1/messages", unmarked)), "the newer body carries no marker");
        assertTrue(withMarker.reusableBy(withMarker) > 0 && withMarker.reusableBy(withMarker) < withMarker.text().length(),
            "reused up to the end of the marked message only");
        String body = "{\"a\": [1, 2] , \"b\":\"x\\\"y\", \"c\":{}}";
        assertEquals("[1, 2]", raw(body, "a"));
        assertEquals("\"x\\\"y\"", raw(body, "b"));
        assertEquals("{}", raw(body, "c"));
        assertEquals("", raw(body, "d"));
    }

    // ---- the replay ----

    void replayBoth(Client client, String model, Upstream upstream) throws Exception {
        replay(client, model, upstream, false);
        replay(client, model, upstream, true);
    }

    /**
     * Four turns, each the whole history plus one more turn; then, for each upstream body after the first: tools and
     * system prompt byte-identical to the previous body's, the previous body's messages (or input items) a byte prefix
     * of its own, the whole previous prompt reused by the stub's cache, and that count in the client's usage.
     */
    void replay(Client client, String model, Upstream upstream, boolean stream) throws Exception {
        h.stub.clear();
        Conversation c = client.start(model, stream, client + " on " + model + (stream ? ", streamed" : ""));
        List<Usage> reported = new ArrayList<>();
        for (String next : List.of(TOOL_RESULT, SECOND_PROMPT, TOOL_RESULT)) {
            reported.add(c.send(h));
            c.add(next);
        }
        reported.add(c.send(h));
        List<StubUpstream.Recorded> bodies = h.stub.requests().stream().filter(r -> r.matches(upstream.path)).toList();
        assertEquals(4, bodies.size(), c.label + ": one upstream call per turn: " + h.stub.requests());
        assertEquals(0, bodies.get(0).cachedTokens(), c.label + ": nothing cached on the first turn");
        assertEquals(0L, reported.get(0).cached(), c.label + ": nothing cached on the first turn");
        String last = bodies.get(3).body();
        assertTrue(last.contains(PNG) && last.contains(TOOL_RESULT.replace("\n", "\\n")), c.label + ": the history reaches Copilot: " + last);
        if (upstream != Upstream.CHAT) {
            assertTrue(last.contains(StubUpstream.REASONING_SIGNATURE), c.label + ": the model's thinking goes back with the history: " + last);
        }
        for (int k = 1; k < 4; k++) {
            String where = c.label + ", turn " + (k + 1);
            String before = bodies.get(k - 1).body(), now = bodies.get(k).body();
            for (String field : upstream.fixed) {
                assertEquals(upstream.comparable(raw(before, field)), upstream.comparable(raw(now, field)), where + ": " + field + " changed");
            }
            String earlier = upstream.comparable(raw(before, upstream.items));
            String later = upstream.comparable(raw(now, upstream.items));
            String earlierOpen = earlier.substring(0, earlier.length() - 1);
            if (!later.startsWith(earlierOpen + ",")) {
                fail(where + ": the earlier " + upstream.items + " are not a byte prefix of the later ones; they part at\n  before: "
                    + around(earlierOpen, later) + "\n  after:  " + around(later, earlierOpen));
            }
            String earlierPrompt = bodies.get(k - 1).prompt();
            int cached = bodies.get(k).cachedTokens();
            assertNotNull(earlierPrompt, where + ": the stub's cache saw no prompt");
            assertTrue(bodies.get(k).prompt().startsWith(earlierPrompt), where + ": the stub's prompt lost its prefix");
            assertTrue(cached * StubUpstream.CACHE_CHARS_PER_TOKEN > earlierPrompt.length() - StubUpstream.CACHE_STEP_TOKENS * StubUpstream.CACHE_CHARS_PER_TOKEN,
                where + ": the cache reused " + cached + " tokens of a " + earlierPrompt.length() + "-character earlier prompt");
            assertEquals(cached, reported.get(k).cached(), where + ": the client's usage reports the cached tokens Copilot reported");
            assertEquals(Math.max(1, now.length() / 4), reported.get(k).input(), where + ": the client's usage reports all the input Copilot counted, "
                + "cached included, once"); // the stub counts 4 characters of the body a token
        }
    }

    /** Where two texts part: the 60 characters of {@code a} from 30 before the first difference. */
    static String around(String a, String b) {
        int i = 0;
        while (i < a.length() && i < b.length() && a.charAt(i) == b.charAt(i)) i++;
        int from = Math.max(0, i - 30);
        return "@" + i + " " + a.substring(from, Math.min(a.length(), i + 30));
    }

    /** The exact text of a top-level field's value in a JSON body, as sent ("" when absent). */
    static String raw(String body, String field) throws IOException {
        try (JsonParser p = CopilotApi.JSON.getFactory().createParser(body)) {
            if (p.nextToken() != JsonToken.START_OBJECT) throw new AssertionError("not a JSON object: " + body);
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                p.nextToken();
                int start = (int) p.currentTokenLocation().getCharOffset();
                p.skipChildren();
                p.finishToken();
                int end = (int) p.currentLocation().getCharOffset();
                if (name.equals(field)) return body.substring(start, end);
            }
        }
        return "";
    }

    /** Where a route's upstream bodies go, which fields must not change between turns, and which array grows. */
    enum Upstream {
        CHAT("/chat/completions", "messages", "tools"),
        RESPONSES("/responses", "input", "tools", "instructions"),
        MESSAGES("/v1/messages", "messages", "tools", "system");

        final String path;
        final String items;
        final List<String> fixed;

        Upstream(String path, String items, String... fixed) {
            this.path = path;
            this.items = items;
            this.fixed = List.of(fixed);
        }

        /**
         * The text compared between turns. On /v1/messages cache_control markers are not prompt content (the client moves
         * its marker to the newest message each turn, as Claude Code does), so they are left out of the comparison.
         */
        String comparable(String raw) {
            if (this != MESSAGES) return raw;
            return raw.replaceAll(",\"cache_control\":\\{[^{}]*\\}", "").replaceAll("\"cache_control\":\\{[^{}]*\\},?", "");
        }
    }

    // ---- the clients ----

    static final String FIRST_PROMPT = "Please list the files in this folder.";
    static final String SECOND_PROMPT = "Thanks. Now list them once more, with their sizes.";
    static final String TOOL_RESULT = "notes.txt\nplan.md\nsrc/";
    /** A 1x1 PNG, pasted into the first prompt. */
    static final String PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

    /** A system prompt long enough to be cached (about 1,500 tokens), starting with the conversation's label. */
    static String systemPrompt(String label) {
        StringBuilder s = new StringBuilder("Conversation: " + label + ". You are a careful coding assistant.\n");
        for (int i = 1; s.length() < 6000; i++) {
            s.append("Rule ").append(i).append(": read the files you are about to change, keep each change small, and say what you ran.\n");
        }
        return s.toString();
    }

    static ObjectNode schema(String... required) {
        ObjectNode schema = CopilotApi.JSON.createObjectNode().put("type", "object");
        ObjectNode props = schema.putObject("properties");
        ArrayNode req = schema.putArray("required");
        for (String name : required) {
            props.putObject(name).put("type", "string");
            req.add(name);
        }
        return schema;
    }

    enum Client {
        CHAT("/v1/chat/completions") {
            @Override
            Conversation start(String model, boolean stream, String label) {
                return new ChatConversation(path, model, stream, label);
            }
        },
        MESSAGES("/v1/messages") {
            @Override
            Conversation start(String model, boolean stream, String label) {
                return new MessagesConversation(path, model, stream, label);
            }
        },
        RESPONSES("/v1/responses") {
            @Override
            Conversation start(String model, boolean stream, String label) {
                return new ResponsesConversation(path, model, stream, label, false);
            }
        },
        RESPONSES_WITHOUT_IDS("/v1/responses") {
            @Override
            Conversation start(String model, boolean stream, String label) {
                return new ResponsesConversation(path, model, stream, label, false).withoutIds();
            }
        },
        CHAINED_RESPONSES("/v1/responses") {
            @Override
            Conversation start(String model, boolean stream, String label) {
                return new ResponsesConversation(path, model, stream, label, true);
            }
        };

        final String path;

        Client(String path) {
            this.path = path;
        }

        abstract Conversation start(String model, boolean stream, String label);
    }

    /** What a client read in an answer's usage: all its input tokens, cached included, and the cached ones. */
    record Usage(long input, long cached) {}

    /** A client's side of one conversation: the request it re-sends, grown by each answer and each next turn. */
    abstract static class Conversation {
        final String path;
        final boolean stream;
        final String label;
        final ObjectNode request = CopilotApi.JSON.createObjectNode();
        /** The tool calls of the latest answer (ids), which a tool result answers. */
        final List<String> pendingCalls = new ArrayList<>();

        Conversation(String path, String model, boolean stream, String label) {
            this.path = path;
            this.stream = stream;
            this.label = label;
            request.put("model", model);
            if (stream) request.put("stream", true);
        }

        /** Sends the request, adds the answer to the history as the client would, and returns the usage it reported. */
        Usage send(CopilotApiTests.Harness h) throws Exception {
            beforeSend();
            HttpResponse<String> r = h.post(path, request.toString());
            assertEquals(200, r.statusCode(), label + ": " + r.body());
            pendingCalls.clear();
            JsonNode usage = stream ? foldStream(dataLines(r.body()).stream().filter(d -> !d.equals("[DONE]")).map(CopilotApiTests::json).toList())
                : addAnswer(json(r.body()));
            assertTrue(usage != null && usage.isObject(), label + ": no usage in the answer: " + r.body());
            return usage(usage);
        }

        /** The next turn: TOOL_RESULT answers the pending tool calls, anything else is a person's prompt. */
        void add(String turn) {
            if (turn.equals(TOOL_RESULT)) {
                assertTrue(!pendingCalls.isEmpty(), label + ": the model was expected to call a tool");
                for (String id : pendingCalls) addToolResult(id, turn);
            } else {
                addPrompt(turn);
            }
        }

        /** What a client changes in each request besides the history (nothing by default). */
        void beforeSend() {
        }

        /** Adds a JSON answer to the history; returns its usage object. */
        abstract JsonNode addAnswer(JsonNode answer);

        /** Adds a streamed answer to the history; returns its usage object (the last one, or the merged ones). */
        abstract JsonNode foldStream(List<JsonNode> events);

        /** All input tokens (cached included) and the cached ones, read from the API's usage object. */
        abstract Usage usage(JsonNode usage);

        abstract void addToolResult(String callId, String result);

        abstract void addPrompt(String text);
    }

    /** OpenAI chat completions: the system prompt as the first message, the assistant message sent back as received. */
    static final class ChatConversation extends Conversation {
        ChatConversation(String path, String model, boolean stream, String label) {
            super(path, model, stream, label);
            if (stream) request.putObject("stream_options").put("include_usage", true);
            request.put("reasoning_effort", "medium");
            ArrayNode tools = request.putArray("tools");
            tools.addObject().put("type", "function").putObject("function").put("name", "Bash").put("description", "Runs a shell command.")
                .set("parameters", schema("command"));
            tools.addObject().put("type", "function").putObject("function").put("name", "Read").put("description", "Reads a file.")
                .set("parameters", schema("path"));
            ArrayNode messages = request.putArray("messages");
            messages.addObject().put("role", "system").put("content", systemPrompt(label));
            ArrayNode parts = messages.addObject().put("role", "user").putArray("content");
            parts.addObject().put("type", "text").put("text", FIRST_PROMPT);
            parts.addObject().put("type", "image_url").putObject("image_url").put("url", "data:image/png;base64," + PNG);
        }

        @Override
        JsonNode addAnswer(JsonNode answer) {
            addAssistant((ObjectNode) answer.path("choices").get(0).path("message").deepCopy());
            return answer.path("usage");
        }

        @Override
        Usage usage(JsonNode usage) {
            return new Usage(usage.path("prompt_tokens").asLong(-1), usage.path("prompt_tokens_details").path("cached_tokens").asLong(-1));
        }

        @Override
        JsonNode foldStream(List<JsonNode> chunks) {
            ObjectNode message = CopilotApi.JSON.createObjectNode().put("role", "assistant");
            StringBuilder content = new StringBuilder();
            StringBuilder reasoning = new StringBuilder();
            String opaque = null;
            Map<Integer, ObjectNode> calls = new TreeMap<>();
            JsonNode usage = null;
            for (JsonNode chunk : chunks) {
                if (chunk.path("usage").isObject()) usage = chunk.path("usage");
                for (JsonNode choice : chunk.path("choices")) {
                    JsonNode delta = choice.path("delta");
                    content.append(delta.path("content").asText(""));
                    reasoning.append(delta.path("reasoning_text").asText(""));
                    if (delta.hasNonNull("reasoning_opaque")) opaque = delta.path("reasoning_opaque").asText();
                    for (JsonNode fragment : delta.path("tool_calls")) {
                        ObjectNode call = calls.computeIfAbsent(fragment.path("index").asInt(), i -> {
                            ObjectNode c = CopilotApi.JSON.createObjectNode();
                            c.put("id", "").put("type", "function").putObject("function").put("name", "").put("arguments", "");
                            return c;
                        });
                        if (fragment.has("id")) call.put("id", fragment.path("id").asText());
                        ObjectNode fn = (ObjectNode) call.path("function");
                        if (fragment.path("function").has("name")) fn.put("name", fragment.path("function").path("name").asText());
                        fn.put("arguments", fn.path("arguments").asText() + fragment.path("function").path("arguments").asText(""));
                    }
                }
            }
            if (content.length() > 0) message.put("content", content.toString()); else message.putNull("content");
            if (reasoning.length() > 0) message.put("reasoning_text", reasoning.toString());
            if (opaque != null) message.put("reasoning_opaque", opaque);
            if (!calls.isEmpty()) calls.values().forEach(message.putArray("tool_calls")::add);
            addAssistant(message);
            return usage;
        }

        private void addAssistant(ObjectNode message) {
            for (JsonNode call : message.path("tool_calls")) pendingCalls.add(call.path("id").asText());
            ((ArrayNode) request.path("messages")).add(message);
        }

        @Override
        void addToolResult(String callId, String result) {
            ((ArrayNode) request.path("messages")).addObject().put("role", "tool").put("tool_call_id", callId).put("content", result);
        }

        @Override
        void addPrompt(String text) {
            ((ArrayNode) request.path("messages")).addObject().put("role", "user").put("content", text);
        }
    }

    /**
     * Anthropic Messages as Claude Code sends it: system blocks (a billing line that differs per request, then the prompt
     * with a cache marker), tools, and a marker on the last block of the newest user message only (moved each turn); the
     * assistant content sent back as received.
     */
    static final class MessagesConversation extends Conversation {
        private boolean marked = true;
        private int requests;

        MessagesConversation(String path, String model, boolean stream, String label) {
            super(path, model, stream, label);
            request.put("max_tokens", 4096);
            request.putObject("thinking").put("type", "enabled").put("budget_tokens", 2048);
            ArrayNode system = request.putArray("system");
            system.addObject().put("type", "text").put("text", billingHeader());
            system.addObject().put("type", "text").put("text", "You are Claude Code, a coding assistant.");
            system.addObject().put("type", "text").put("text", systemPrompt(label)).putObject("cache_control").put("type", "ephemeral");
            ArrayNode tools = request.putArray("tools");
            tools.addObject().put("name", "Bash").put("description", "Runs a shell command.").set("input_schema", schema("command"));
            tools.addObject().put("name", "Read").put("description", "Reads a file.").set("input_schema", schema("path"));
            ArrayNode blocks = request.putArray("messages").addObject().put("role", "user").putArray("content");
            blocks.addObject().put("type", "text").put("text", FIRST_PROMPT);
            blocks.addObject().put("type", "image").putObject("source").put("type", "base64").put("media_type", "image/png").put("data", PNG);
            mark(blocks);
        }

        /** Claude Code's billing line, different in each request here: copilot-api must not let it reach Copilot (WIRE.md). */
        private String billingHeader() {
            return "x-anthropic-billing-header: cc_version=2.1.331.e3f; cc_entrypoint=cli; cch=" + Integer.toHexString(0x4e1a0 + requests++) + ";";
        }

        @Override
        void beforeSend() {
            ((ObjectNode) request.path("system").get(0)).put("text", billingHeader());
        }

        @Override
        JsonNode addAnswer(JsonNode answer) {
            addAssistant((ArrayNode) answer.path("content").deepCopy());
            return answer.path("usage");
        }

        @Override
        Usage usage(JsonNode usage) {
            long cached = usage.path("cache_read_input_tokens").asLong(-1);
            return new Usage(usage.path("input_tokens").asLong(-1) + cached, cached);
        }

        /** The message's usage: message_start's, overridden field by field by message_delta's (as the Anthropic SDKs merge them). */
        @Override
        JsonNode foldStream(List<JsonNode> events) {
            ArrayNode content = CopilotApi.JSON.createArrayNode();
            Map<Integer, StringBuilder> json = new TreeMap<>();
            ObjectNode usage = CopilotApi.JSON.createObjectNode();
            for (JsonNode e : events) {
                switch (e.path("type").asText()) {
                    case "message_start" -> usage.setAll((ObjectNode) e.path("message").path("usage"));
                    case "content_block_start" -> content.add(e.path("content_block").deepCopy());
                    case "content_block_delta" -> {
                        int index = e.path("index").asInt();
                        ObjectNode block = (ObjectNode) content.get(index);
                        JsonNode d = e.path("delta");
                        switch (d.path("type").asText()) {
                            case "text_delta" -> block.put("text", block.path("text").asText() + d.path("text").asText());
                            case "thinking_delta" -> block.put("thinking", block.path("thinking").asText() + d.path("thinking").asText());
                            case "signature_delta" -> block.put("signature", d.path("signature").asText());
                            case "input_json_delta" -> json.computeIfAbsent(index, i -> new StringBuilder()).append(d.path("partial_json").asText());
                            default -> { }
                        }
                    }
                    case "message_delta" -> usage.setAll((ObjectNode) e.path("usage"));
                    default -> { }
                }
            }
            json.forEach((index, text) -> ((ObjectNode) content.get(index)).set("input", json(text.toString())));
            addAssistant(content);
            return usage;
        }

        private void addAssistant(ArrayNode content) {
            for (JsonNode block : content) {
                if (block.path("type").asText().equals("tool_use")) pendingCalls.add(block.path("id").asText());
            }
            messages().addObject().put("role", "assistant").set("content", content);
        }

        @Override
        void addToolResult(String callId, String result) {
            ArrayNode blocks = newUserTurn();
            blocks.addObject().put("type", "tool_result").put("tool_use_id", callId).put("content", result);
            mark(blocks);
        }

        @Override
        void addPrompt(String text) {
            ArrayNode blocks = newUserTurn();
            blocks.addObject().put("type", "text").put("text", text);
            mark(blocks);
        }

        /** Claude Code moves its message marker: only the newest user message carries one. */
        private ArrayNode newUserTurn() {
            unmarkMessages();
            return messages().addObject().put("role", "user").putArray("content");
        }

        private void unmarkMessages() {
            for (JsonNode m : messages()) {
                for (JsonNode block : m.path("content")) {
                    if (block instanceof ObjectNode o) o.remove("cache_control");
                }
            }
        }

        private void mark(ArrayNode blocks) {
            if (marked) ((ObjectNode) blocks.get(blocks.size() - 1)).putObject("cache_control").put("type", "ephemeral");
        }

        /** A client that never marks anything for caching: the markers go, and no new turn gets one. */
        MessagesConversation unmarked() {
            marked = false;
            ((ObjectNode) request.path("system").get(2)).remove("cache_control");
            unmarkMessages();
            return this;
        }

        private ArrayNode messages() {
            return (ArrayNode) request.path("messages");
        }
    }

    /**
     * OpenAI Responses as Codex sends it (instructions, flat tools, store false, output items sent back as received); or,
     * chained, as the OpenAI SDK's stateful use: store true and previous_response_id, each request only its new items.
     */
    static final class ResponsesConversation extends Conversation {
        private final boolean chained;
        private boolean withoutIds;

        ResponsesConversation(String path, String model, boolean stream, String label, boolean chained) {
            super(path, model, stream, label);
            this.chained = chained;
            request.put("instructions", systemPrompt(label));
            request.put("store", chained);
            request.putObject("reasoning").put("effort", "medium");
            request.putArray("include").add("reasoning.encrypted_content");
            ArrayNode tools = request.putArray("tools");
            tools.addObject().put("type", "function").put("name", "Bash").put("description", "Runs a shell command.").set("parameters", schema("command"));
            tools.addObject().put("type", "function").put("name", "Read").put("description", "Reads a file.").set("parameters", schema("path"));
            ArrayNode content = request.putArray("input").addObject().put("type", "message").put("role", "user").putArray("content");
            content.addObject().put("type", "input_text").put("text", FIRST_PROMPT);
            content.addObject().put("type", "input_image").put("image_url", "data:image/png;base64," + PNG);
        }

        @Override
        JsonNode addAnswer(JsonNode answer) {
            answered(answer);
            for (JsonNode item : answer.path("output")) addItem(item.deepCopy());
            return answer.path("usage");
        }

        @Override
        Usage usage(JsonNode usage) {
            return new Usage(usage.path("input_tokens").asLong(-1), usage.path("input_tokens_details").path("cached_tokens").asLong(-1));
        }

        @Override
        JsonNode foldStream(List<JsonNode> events) {
            JsonNode usage = null;
            for (JsonNode e : events) {
                if (e.path("type").asText().equals("response.completed")) {
                    answered(e.path("response"));
                    usage = e.path("response").path("usage");
                }
            }
            for (JsonNode e : events) {
                if (e.path("type").asText().equals("response.output_item.done")) addItem(e.path("item").deepCopy());
            }
            return usage;
        }

        /** A client that sends the output items back without their ids (Codex 0.171 keeps them; some clients do not). */
        ResponsesConversation withoutIds() {
            withoutIds = true;
            return this;
        }

        /** Chained: the next request continues this response and carries only what comes after it. */
        private void answered(JsonNode response) {
            if (!chained) return;
            request.put("previous_response_id", response.path("id").asText());
            input().removeAll();
        }

        private void addItem(JsonNode item) {
            if (item.path("type").asText().equals("function_call")) pendingCalls.add(item.path("call_id").asText());
            if (withoutIds) ((ObjectNode) item).remove("id");
            if (!chained) input().add(item);
        }

        @Override
        void addToolResult(String callId, String result) {
            input().addObject().put("type", "function_call_output").put("call_id", callId).put("output", result);
        }

        @Override
        void addPrompt(String text) {
            ObjectNode m = input().addObject().put("type", "message").put("role", "user");
            m.putArray("content").addObject().put("type", "input_text").put("text", text);
        }

        private ArrayNode input() {
            return (ArrayNode) request.path("input");
        }
    }
}
