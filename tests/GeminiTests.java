package copilotapi;

import static copilotapi.CopilotApiTests.dataLines;
import static copilotapi.CopilotApiTests.json;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.net.http.HttpResponse;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

/**
 * The Gemini API (issue 20): generateContent, streamGenerateContent and countTokens translated onto the chat pivot,
 * against the stub, on a GPT, a Claude, a Gemini and a responses-only model; Google's error shape, keys and the
 * browser guard; and the translator's pure parts (schemas, configuration, thought signatures).
 */
final class GeminiTests {
    private GeminiTests() {
    }

    static final List<String> MODELS = List.of("gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-pro", "gpt-5.1-codex");
    static final String HI = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]}]}";
    /** A function declared the Gemini way: OpenAPI types in upper case. */
    static final String TOOLS = """
        "tools":[{"functionDeclarations":[{"name":"run_shell_command","description":"Run a command",
          "parameters":{"type":"OBJECT","properties":{"command":{"type":"STRING"},"flags":{"type":"ARRAY","items":{"type":"STRING"}}},
          "required":["command"]}}]}]""";

    static String call(String model, String method) {
        return "/v1beta/models/" + model + ":" + method;
    }

    /** The text of every non-thought part of every event, in order. */
    static String text(List<JsonNode> events) {
        StringBuilder b = new StringBuilder();
        for (JsonNode e : events) {
            for (JsonNode p : e.path("candidates").path(0).path("content").path("parts")) {
                if (!p.path("thought").asBoolean(false)) b.append(p.path("text").asText(""));
            }
        }
        return b.toString();
    }

    static List<JsonNode> events(String sse) {
        List<JsonNode> out = new ArrayList<>();
        for (String d : dataLines(sse)) out.add(json(d));
        return out;
    }

    static List<JsonNode> parts(JsonNode response) {
        List<JsonNode> out = new ArrayList<>();
        response.path("candidates").path(0).path("content").path("parts").forEach(out::add);
        return out;
    }

    /** Routes, streams, tools, thoughts, images, errors and billing, through copilot-api to the stub. */
    static final class GeminiRouteTests extends CopilotApiTests.WithHarness {
        @Test
        void generateContentAnswersOnEveryKindOfModelUnderEveryPrefix() throws Exception {
            for (String model : MODELS) {
                for (String prefix : List.of("/v1beta", "/v1", "")) {
                    HttpResponse<String> r = h.post(prefix + "/models/" + model + ":generateContent", HI);
                    assertEquals(200, r.statusCode(), model + prefix + ": " + r.body());
                    JsonNode a = json(r.body());
                    JsonNode c = a.path("candidates").path(0);
                    assertEquals("model", c.path("content").path("role").asText(), r.body());
                    assertEquals("Hello from " + model + ".", c.path("content").path("parts").path(0).path("text").asText(), r.body());
                    assertEquals("STOP", c.path("finishReason").asText(), r.body());
                    JsonNode u = a.path("usageMetadata");
                    assertTrue(u.path("promptTokenCount").asInt() > 0 && u.path("candidatesTokenCount").asInt() > 0, r.body());
                    assertEquals(u.path("promptTokenCount").asInt() + u.path("candidatesTokenCount").asInt() + u.path("thoughtsTokenCount").asInt(),
                        u.path("totalTokenCount").asInt(), "thoughts are counted apart: " + r.body());
                    assertEquals(model, a.path("modelVersion").asText(), r.body());
                    assertFalse(a.path("responseId").asText().isEmpty(), r.body());
                }
            }
        }

        @Test
        void streamGenerateContentWithAltSseSendsDataLinesAndEndsWithFinishAndUsage() throws Exception {
            for (String model : MODELS) {
                HttpResponse<String> r = h.post(call(model, "streamGenerateContent") + "?alt=sse", HI);
                assertEquals(200, r.statusCode(), r.body());
                assertTrue(r.headers().firstValue("content-type").orElse("").startsWith("text/event-stream"), model);
                assertFalse(r.body().contains("event:"), "Gemini's events are data lines only: " + r.body());
                List<JsonNode> events = events(r.body());
                assertTrue(events.size() >= 2, model + " streams in pieces: " + r.body());
                assertEquals("Hello from " + model + ".", text(events), r.body());
                JsonNode last = events.get(events.size() - 1);
                assertEquals("STOP", last.path("candidates").path(0).path("finishReason").asText(), r.body());
                assertTrue(last.path("usageMetadata").path("totalTokenCount").asInt() > 0, r.body());
                for (JsonNode e : events.subList(0, events.size() - 1)) {
                    assertTrue(e.path("candidates").path(0).path("finishReason").isMissingNode(), "only the last event finishes: " + e);
                }
            }
        }

        @Test
        void streamGenerateContentWithoutAltIsOneJsonArray() throws Exception {
            HttpResponse<String> r = h.post(call("gpt-4.1", "streamGenerateContent"), HI);
            assertEquals(200, r.statusCode(), r.body());
            JsonNode a = json(r.body());
            assertTrue(a.isArray() && a.size() >= 1, r.body());
            assertEquals("Hello from gpt-4.1.", text(List.of(a.get(a.size() - 1))), r.body());
            assertEquals("STOP", a.get(a.size() - 1).path("candidates").path(0).path("finishReason").asText());
        }

        @Test
        void upperCaseOpenApiToolSchemasReachCopilotAsJsonSchema() throws Exception {
            HttpResponse<String> r = h.post(call("gpt-4.1", "generateContent"), "{" + TOOLS + ",\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"list files\"}]}]}");
            assertEquals(200, r.statusCode(), r.body());
            JsonNode params = h.stub.last("/chat/completions").json().path("tools").path(0).path("function").path("parameters");
            assertEquals("object", params.path("type").asText(), params.toString());
            assertEquals("string", params.path("properties").path("command").path("type").asText(), params.toString());
            assertEquals("string", params.path("properties").path("flags").path("items").path("type").asText(), params.toString());
        }

        @Test
        void parametersJsonSchemaIsSentAsItIs() throws Exception {
            String tools = "\"tools\":[{\"functionDeclarations\":[{\"name\":\"read_file\",\"parametersJsonSchema\":"
                + "{\"type\":\"object\",\"properties\":{\"absolute_path\":{\"type\":\"string\",\"minLength\":1}},\"required\":[\"absolute_path\"]}}]}]";
            HttpResponse<String> r = h.post(call("gpt-4.1", "generateContent"), "{" + tools + ",\"contents\":[{\"parts\":[{\"text\":\"read\"}]}]}");
            assertEquals(200, r.statusCode(), r.body());
            JsonNode params = h.stub.last("/chat/completions").json().path("tools").path(0).path("function").path("parameters");
            assertEquals(json("{\"type\":\"object\",\"properties\":{\"absolute_path\":{\"type\":\"string\",\"minLength\":1}},"
                + "\"required\":[\"absolute_path\"]}"), params);
            JsonNode fc = parts(json(r.body())).stream().filter(p -> p.has("functionCall")).findFirst().orElseThrow().path("functionCall");
            assertEquals("x", fc.path("args").path("absolute_path").asText(), r.body());
        }

        /** The function call comes back with an id; its functionResponse, with that id, reaches Copilot as the answer to that call. */
        @Test
        void aFunctionCallRoundTripOnEveryModelStreamedAndNot() throws Exception {
            for (String model : MODELS) {
                for (boolean stream : List.of(false, true)) {
                    String where = model + (stream ? " streamed" : "");
                    String ask = "{" + TOOLS + ",\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"list files\"}]}]}";
                    HttpResponse<String> first = h.post(call(model, stream ? "streamGenerateContent?alt=sse" : "generateContent"), ask);
                    assertEquals(200, first.statusCode(), where + ": " + first.body());
                    List<JsonNode> events = stream ? events(first.body()) : List.of(json(first.body()));
                    List<JsonNode> modelParts = new ArrayList<>();
                    for (JsonNode e : events) e.path("candidates").path(0).path("content").path("parts").forEach(modelParts::add);
                    JsonNode fc = modelParts.stream().filter(p -> p.has("functionCall")).findFirst().orElseThrow(() -> new AssertionError(where + ": " + first.body()))
                        .path("functionCall");
                    assertEquals("run_shell_command", fc.path("name").asText(), where);
                    assertEquals(json(StubUpstream.BASH_ARGUMENTS).path("command").asText(), fc.path("args").path("command").asText(), where + ": " + fc);
                    String id = fc.path("id").asText();
                    assertFalse(id.isEmpty(), where + ": the call has an id: " + fc);
                    assertEquals("STOP", events.get(events.size() - 1).path("candidates").path(0).path("finishReason").asText(), where);
                    ObjectNode answer = (ObjectNode) json("{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"id\":\"" + id
                        + "\",\"name\":\"run_shell_command\",\"response\":{\"output\":\"a.txt b.txt\"}}}]}");
                    String history = "{" + TOOLS + ",\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"list files\"}]},"
                        + "{\"role\":\"model\",\"parts\":" + CopilotApi.Json.write(CopilotApi.Json.array().addAll(modelParts)) + "}," + answer + "]}";
                    HttpResponse<String> second = h.post(call(model, "generateContent"), history);
                    assertEquals(200, second.statusCode(), where + ": " + second.body());
                    assertEquals("Tool said: a.txt b.txt", parts(json(second.body())).get(0).path("text").asText(), where + ": " + second.body());
                    String upstream = model.equals("gpt-5.1-codex") ? "/responses" : "/chat/completions";
                    String sent = h.stub.last(upstream).body();
                    assertTrue(sent.contains(id), where + ": the call and its answer keep the id " + id + ": " + sent);
                    if (upstream.equals("/responses")) {
                        assertTrue(sent.contains("\"encrypted_content\":\"" + StubUpstream.REASONING_SIGNATURE + "\""),
                            where + ": the encrypted reasoning came back in the thought signature and went to Copilot again: " + sent);
                    }
                }
            }
        }

        @Test
        void callsWithoutIdsGetStableOnesThatTheirResponsesFind() throws Exception {
            String body = "{" + TOOLS + ",\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"list files\"}]},"
                + "{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"run_shell_command\",\"args\":{\"command\":\"ls\"}}}]},"
                + "{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"name\":\"run_shell_command\",\"response\":{\"output\":\"a.txt\"}}}]}]}";
            assertEquals(200, h.post(call("gpt-4.1", "generateContent"), body).statusCode());
            JsonNode messages = h.stub.last("/chat/completions").json().path("messages");
            String callId = messages.get(1).path("tool_calls").path(0).path("id").asText();
            assertFalse(callId.isEmpty(), messages.toString());
            assertEquals(callId, messages.get(2).path("tool_call_id").asText(), messages.toString());
            assertEquals("a.txt", messages.get(2).path("content").asText());
            h.post(call("gpt-4.1", "generateContent"), body);
            assertEquals(callId, h.stub.last("/chat/completions").json().path("messages").get(1).path("tool_calls").path(0).path("id").asText(),
                "the same conversation gets the same id (a stable prompt prefix)");
        }

        @Test
        void aFunctionResponseThatAnswersNoCallIs400NamingTheField() throws Exception {
            String body = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"name\":\"x\",\"response\":{}}}]}]}";
            HttpResponse<String> r = h.post(call("gpt-4.1", "generateContent"), body);
            assertEquals(400, r.statusCode(), r.body());
            assertEquals("INVALID_ARGUMENT", json(r.body()).path("error").path("status").asText(), r.body());
            assertTrue(json(r.body()).path("error").path("message").asText().contains("contents[0].parts[0].functionResponse"), r.body());
            assertEquals(0, h.stub.count("/chat/completions"), "nothing was sent");
        }

        /** Claude's thinking: thought parts when asked, the signature on the next part, and both back to Copilot on the next turn. */
        @Test
        void thoughtsAndTheirSignatureGoOutAndComeBackIntact() throws Exception {
            String ask = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"think\"}]}],"
                + "\"generationConfig\":{\"thinkingConfig\":{\"includeThoughts\":true,\"thinkingBudget\":2048}}}";
            for (boolean stream : List.of(false, true)) {
                HttpResponse<String> r = h.post(call("claude-sonnet-4.5", stream ? "streamGenerateContent?alt=sse" : "generateContent"), ask);
                assertEquals(200, r.statusCode(), r.body());
                assertEquals(2048, h.stub.last("/chat/completions").json().path("thinking_budget").asInt(), "the budget reached Copilot");
                List<JsonNode> all = new ArrayList<>();
                for (JsonNode e : stream ? events(r.body()) : List.of(json(r.body()))) e.path("candidates").path(0).path("content").path("parts").forEach(all::add);
                StringBuilder thought = new StringBuilder();
                all.stream().filter(p -> p.path("thought").asBoolean(false)).forEach(p -> thought.append(p.path("text").asText()));
                assertEquals("The user wants a short answer; keep it brief.", thought.toString(), r.body());
                JsonNode signed = all.stream().filter(p -> p.has("thoughtSignature")).findFirst().orElseThrow(() -> new AssertionError(r.body()));
                assertFalse(signed.path("thought").asBoolean(false), "the signature rides on a part Gemini CLI keeps: " + signed);
                // Gemini CLI sends back what it kept: no thought parts, the signed text part
                List<JsonNode> kept = all.stream().filter(p -> !p.path("thought").asBoolean(false)).toList();
                String next = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"think\"}]},{\"role\":\"model\",\"parts\":"
                    + CopilotApi.Json.write(CopilotApi.Json.array().addAll(kept)) + "},{\"role\":\"user\",\"parts\":[{\"text\":\"again\"}]}]}";
                assertEquals(200, h.post(call("claude-sonnet-4.5", "generateContent"), next).statusCode());
                JsonNode assistant = h.stub.last("/chat/completions").json().path("messages").get(1);
                assertEquals(StubUpstream.REASONING_SIGNATURE, assistant.path("reasoning_opaque").asText(), assistant.toString());
                assertEquals("The user wants a short answer; keep it brief.", assistant.path("reasoning_text").asText(), assistant.toString());
            }
        }

        /** Gemini CLI asks Claude for thoughts with includeThoughts alone (or a level) and no maxOutputTokens. */
        @Test
        void thinkingWithoutMaxOutputTokensStaysBelowTheModelsOutputLimit() throws Exception {
            for (String config : List.of("{\"includeThoughts\":true}", "{\"includeThoughts\":true,\"thinkingLevel\":\"HIGH\"}")) {
                String ask = "{\"contents\":[{\"parts\":[{\"text\":\"think\"}]}],\"generationConfig\":{\"thinkingConfig\":" + config + "}}";
                assertEquals(200, h.post(call("claude-sonnet-4.5", "generateContent"), ask).statusCode());
                JsonNode sent = h.stub.last("/chat/completions").json();
                assertEquals(32000, sent.path("max_tokens").asInt(), config + ": the model's output limit: " + sent);
                int budget = sent.path("thinking_budget").asInt();
                assertTrue(budget > 0 && budget < 32000, config + ": " + sent);
            }
        }

        @Test
        void withoutIncludeThoughtsNoThoughtPartIsSentButTheSignatureIs() throws Exception {
            String ask = "{\"contents\":[{\"parts\":[{\"text\":\"think\"}]}],\"generationConfig\":{\"thinkingConfig\":{\"thinkingBudget\":2048}}}";
            List<JsonNode> ps = parts(json(h.post(call("claude-sonnet-4.5", "generateContent"), ask).body()));
            assertTrue(ps.stream().noneMatch(p -> p.path("thought").asBoolean(false)), ps.toString());
            assertTrue(ps.stream().anyMatch(p -> p.has("thoughtSignature")), ps.toString());
        }

        @Test
        void gemini_clisPlaceholderSignatureNeverReachesCopilot() throws Exception {
            String body = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]},{\"role\":\"model\",\"parts\":[{\"text\":\"Hello\","
                + "\"thoughtSignature\":\"" + CopilotApi.Gemini.PLACEHOLDER_SIGNATURE + "\"}]},{\"role\":\"user\",\"parts\":[{\"text\":\"again\"}]}]}";
            assertEquals(200, h.post(call("claude-sonnet-4.5", "generateContent"), body).statusCode());
            String sent = h.stub.last("/chat/completions").body();
            assertFalse(sent.contains(CopilotApi.Gemini.PLACEHOLDER_SIGNATURE), sent);
            assertFalse(sent.contains("reasoning_opaque"), sent);
        }

        @Test
        void anInlineImageGoesAsAnImagePartWithTheVisionHeader() throws Exception {
            String body = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"what is this?\"},"
                + "{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":\"iVBORw0KGgo=\"}}]}]}";
            HttpResponse<String> r = h.post(call("gpt-4.1", "generateContent"), body);
            assertEquals(200, r.statusCode(), r.body());
            StubUpstream.Recorded sent = h.stub.last("/chat/completions");
            assertEquals("true", sent.header("copilot-vision-request"));
            assertEquals("data:image/png;base64,iVBORw0KGgo=", sent.json().path("messages").get(0).path("content").get(1).path("image_url").path("url").asText());
        }

        @Test
        void anUnknownModelIs404InGooglesShapeWithCloseMatches() throws Exception {
            HttpResponse<String> r = h.post(call("gemini-9-ultra", "generateContent"), HI);
            assertEquals(404, r.statusCode(), r.body());
            JsonNode e = json(r.body()).path("error");
            assertEquals(404, e.path("code").asInt(), r.body());
            assertEquals("NOT_FOUND", e.path("status").asText(), r.body());
            assertTrue(e.path("message").asText().contains("Close matches: gemini-2.5-pro"), r.body());
        }

        /** Gemini CLI asks for ids Copilot may not list (its aliases resolve to them): the catalog's Gemini of that tier answers. */
        @Test
        void aGeminiNameTheCatalogLacksIsAnsweredByItsTierInTheCatalog() throws Exception {
            for (String asked : List.of("gemini-3.1-pro-preview-customtools", "gemini-3.5-flash-lite")) {
                HttpResponse<String> r = h.post(call(asked, "streamGenerateContent") + "?alt=sse", HI);
                assertEquals(200, r.statusCode(), asked + ": " + r.body());
                assertEquals("Hello from gemini-2.5-pro.", text(events(r.body())), asked + ": " + r.body());
            }
            assertEquals(404, h.post(call("gpt-9-sol", "generateContent"), HI).statusCode(), "other vendors' names are never guessed");
        }

        /**
         * Gemini CLI's side calls (non-streamed generateContent without functions: router, loop check, compressor) go to a
         * free model and bill nothing; its main turn (streamed, with its tools) is the person's prompt on the model asked.
         */
        @Test
        void geminiClisSideCallsGoToAFreeModelAndItsMainTurnIsThePrompt() throws Exception {
            String cli = "GeminiCLI-tui/0.61.0/gemini-2.5-pro (linux; x64; terminal)";
            String router = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"route this\"}]}],\"generationConfig\":"
                + "{\"responseMimeType\":\"application/json\",\"responseJsonSchema\":{\"type\":\"OBJECT\",\"properties\":"
                + "{\"complexity_score\":{\"type\":\"INTEGER\"}}}}}";
            HttpResponse<String> side = h.send("POST", call("gemini-3.5-flash-lite", "generateContent"), router, "user-agent", cli);
            assertEquals(200, side.statusCode(), side.body());
            StubUpstream.Recorded sent = h.stub.last("/chat/completions");
            assertEquals("gpt-4.1", sent.json().path("model").asText(), "the catalog's first free model: " + sent.body());
            assertEquals("json_schema", sent.json().path("response_format").path("type").asText(), sent.body());
            assertEquals("integer", sent.json().path("response_format").path("json_schema").path("schema").path("properties")
                .path("complexity_score").path("type").asText(), "upper-case types in responseJsonSchema are normalised: " + sent.body());
            String main = "{" + TOOLS + ",\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]}]}";
            HttpResponse<String> turn = h.send("POST", call("gemini-2.5-pro", "streamGenerateContent") + "?alt=sse", main, "user-agent", cli);
            assertEquals(200, turn.statusCode(), turn.body());
            sent = h.stub.last("/chat/completions");
            assertEquals("gemini-2.5-pro", sent.json().path("model").asText());
            assertEquals("user", sent.header("x-initiator"));
            assertEquals(200, h.post(call("gemini-2.5-pro", "generateContent"), HI).statusCode());
            assertEquals("gemini-2.5-pro", h.stub.last("/chat/completions").json().path("model").asText(),
                "another client's generateContent is nobody's side call");
        }

        /** The compressor sends the whole history: past the free model's prompt window it stays on the model asked. */
        @Test
        void aSideCallLargerThanTheFreeModelsWindowStaysOnTheModelAsked() throws Exception {
            String history = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"" + "hello world ".repeat(70_000)
                + "\"}]},{\"role\":\"user\",\"parts\":[{\"text\":\"Generate a new <state_snapshot> based on the provided history.\"}]}]}";
            HttpResponse<String> r = h.send("POST", call("claude-sonnet-4.5", "generateContent"), history,
                "user-agent", "GeminiCLI-tui/0.61.0/claude-sonnet-4.5 (linux; x64; terminal)");
            assertEquals(200, r.statusCode(), r.body().substring(0, Math.min(300, r.body().length())));
            assertEquals("claude-sonnet-4.5", h.stub.last("/chat/completions").json().path("model").asText());
        }

        @Test
        void badInputIs400InvalidArgumentNamingTheField() throws Exception {
            for (String[] c : new String[][] {
                    {"{}", "contents"},
                    {"{\"contents\":[{\"role\":\"user\"}]}", "contents[0].parts"},
                    {"{\"contents\":[{\"role\":\"robot\",\"parts\":[{\"text\":\"hi\"}]}]}", "contents[0].role"},
                    {"{\"contents\":[{\"role\":\"user\",\"parts\":[]}]}", "contents[0].parts"},
                    {"{\"contents\":[{\"parts\":[{\"text\":\"hi\"}]}],\"tools\":[{\"functionDeclarations\":{\"name\":\"x\"}}]}", "tools[0].functionDeclarations"},
                    {"{\"contents\":[{\"parts\":[{\"text\":\"hi\"}]}],\"generationConfig\":{\"maxOutputTokens\":-1}}", "generationConfig.maxOutputTokens"},
                    {"{\"contents\":[{\"parts\":[{\"inlineData\":{\"mimeType\":\"video/mp4\",\"data\":\"AAAA\"}}]}]}", "contents[0].parts[0].inlineData.mimeType"}}) {
                HttpResponse<String> r = h.post(call("gpt-4.1", "generateContent"), c[0]);
                assertEquals(400, r.statusCode(), c[0] + ": " + r.body());
                JsonNode e = json(r.body()).path("error");
                assertEquals("INVALID_ARGUMENT", e.path("status").asText(), r.body());
                assertTrue(e.path("message").asText().contains("'" + c[1] + "'"), c[1] + " named in: " + r.body());
            }
            assertEquals(0, h.stub.count("/chat/completions"));
        }

        @Test
        void copilotsRateLimitIs429WithRetryInfoAndRetryAfter() throws Exception {
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.error(429, "rate_limited", "Too many requests").header("retry-after", "17"));
            HttpResponse<String> r = h.post(call("gpt-4.1", "generateContent"), HI);
            assertEquals(429, r.statusCode(), r.body());
            assertEquals("17", r.headers().firstValue("retry-after").orElse(""));
            JsonNode e = json(r.body()).path("error");
            assertEquals("RESOURCE_EXHAUSTED", e.path("status").asText(), r.body());
            assertEquals("type.googleapis.com/google.rpc.RetryInfo", e.path("details").path(0).path("@type").asText(), r.body());
            assertEquals("17s", e.path("details").path(0).path("retryDelay").asText(), r.body());
        }

        @Test
        void aCutStreamEndsWithAnErrorObjectNotASilentEnd() throws Exception {
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.rawSse(CopilotApiTests.UpstreamScripts.CHAT_HEAD
                + CopilotApiTests.UpstreamScripts.CHAT_TAIL).cutAfter(1));
            HttpResponse<String> r = h.post(call("gpt-4.1", "streamGenerateContent") + "?alt=sse", HI);
            assertEquals(200, r.statusCode());
            List<JsonNode> events = events(r.body());
            assertEquals("Hel", text(events), r.body());
            JsonNode last = events.get(events.size() - 1).path("error");
            assertEquals("UNAVAILABLE", last.path("status").asText(), r.body());
            assertTrue(last.path("message").asText().contains("Copilot"), r.body());
        }

        @Test
        void countTokensEstimatesForReal() throws Exception {
            HttpResponse<String> small = h.post(call("gemini-2.5-pro", "countTokens"), HI);
            assertEquals(200, small.statusCode(), small.body());
            String longer = "{\"contents\":[{\"parts\":[{\"text\":\"" + "hello world ".repeat(500) + "\"}]}]}";
            int a = json(small.body()).path("totalTokens").asInt();
            int b = json(h.post(call("gemini-2.5-pro", "countTokens"), longer).body()).path("totalTokens").asInt();
            assertTrue(a > 0 && b > a + 500, a + " vs " + b);
            String wrapped = "{\"generateContentRequest\":{\"model\":\"models/gemini-2.5-pro\"," + HI.substring(1) + "}";
            assertEquals(a, json(h.post(call("gemini-2.5-pro", "countTokens"), wrapped).body()).path("totalTokens").asInt());
            assertEquals(0, h.stub.count("/chat/completions"), "counting calls no model");
        }

        @Test
        void theModelListIsGooglesForGoogleClientsAndOpenAisForOthers() throws Exception {
            JsonNode gemini = json(h.get("/v1beta/models").body());
            assertTrue(gemini.path("models").size() > 3, gemini.toString());
            JsonNode first = gemini.path("models").get(0);
            assertTrue(first.path("name").asText().startsWith("models/"), first.toString());
            assertTrue(first.path("supportedGenerationMethods").toString().contains("generateContent"), first.toString());
            for (String[] header : new String[][] {{"x-goog-api-key", "any"}, {"x-goog-api-client", "google-genai-sdk/3.3.0"}}) {
                JsonNode v1 = json(h.send("GET", "/v1/models", null, header).body());
                assertTrue(v1.has("models") && !v1.has("data"), header[0] + ": " + v1);
            }
            assertTrue(json(h.get("/v1/models?key=any").body()).has("models"));
            assertEquals("list", json(h.get("/v1/models").body()).path("object").asText(), "an OpenAI client still gets OpenAI's list");
            JsonNode one = json(h.get("/v1beta/models/gemini-2.5-pro").body());
            assertEquals("models/gemini-2.5-pro", one.path("name").asText(), one.toString());
            assertTrue(one.path("inputTokenLimit").asInt() > 0 && one.path("outputTokenLimit").asInt() > 0, one.toString());
            HttpResponse<String> missing = h.get("/v1beta/models/nope-model");
            assertEquals(404, missing.statusCode());
            assertEquals("NOT_FOUND", json(missing.body()).path("error").path("status").asText(), missing.body());
        }

        @Test
        void anUnknownMethodIs404InGooglesShape() throws Exception {
            HttpResponse<String> r = h.post(call("gpt-4.1", "embedContent"), HI);
            assertEquals(404, r.statusCode(), r.body());
            assertEquals("NOT_FOUND", json(r.body()).path("error").path("status").asText(), r.body());
        }

        @Test
        void aBrowserOriginIsRefusedInGooglesShape() throws Exception {
            HttpResponse<String> r = h.send("POST", call("gpt-4.1", "generateContent"), HI, "origin", "https://evil.example");
            assertEquals(403, r.statusCode(), r.body());
            assertEquals("PERMISSION_DENIED", json(r.body()).path("error").path("status").asText(), r.body());
            assertEquals(0, h.stub.count("/chat/completions"));
        }

        /** A person's text last bills as user; a turn of function responses only is the agent's. */
        @Test
        void thePersonsPromptIsUserAndFunctionResponsesAreAgent() throws Exception {
            h.post(call("gpt-4.1", "generateContent"), HI);
            assertEquals("user", h.stub.last("/chat/completions").header("x-initiator"));
            String body = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"list\"}]},"
                + "{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"id\":\"c1\",\"name\":\"ls\",\"args\":{}}}]},"
                + "{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"id\":\"c1\",\"name\":\"ls\",\"response\":{\"output\":\"a\"}}}]}]}";
            assertEquals(200, h.post(call("gpt-4.1", "generateContent"), body).statusCode());
            assertEquals("agent", h.stub.last("/chat/completions").header("x-initiator"));
        }
    }

    /** --api-key: Google's clients send the key as x-goog-api-key or ?key=; a wrong one is 401 in Google's shape. */
    @TestInstance(TestInstance.Lifecycle.PER_CLASS)
    static final class GeminiApiKeyTests {
        CopilotApiTests.Harness h;

        @BeforeAll
        void up() throws IOException {
            h = new CopilotApiTests.Harness(StubUpstream.start(), CopilotApiTests.controls(new CopilotApi.Operator.ApiKeys(List.of("k-one")),
                CopilotApi.Operator.Pacer.NONE, CopilotApi.Operator.Approver.NONE));
        }

        @AfterAll
        void down() {
            h.close();
        }

        @Test
        void googlesKeyHeaderAndQueryParameterAreAccepted() throws Exception {
            assertEquals(200, h.send("POST", call("gpt-4.1", "generateContent"), HI, "x-goog-api-key", "k-one").statusCode());
            assertEquals(200, h.send("POST", call("gpt-4.1", "generateContent") + "?key=k-one", HI).statusCode());
            assertEquals(200, h.send("POST", "/v1/chat/completions", CopilotApiTests.CHAT_HI, "x-goog-api-key", "k-one").statusCode());
            assertEquals(401, h.send("POST", "/v1/chat/completions?key=k-one", CopilotApiTests.CHAT_HI).statusCode(),
                "?key= is Google's way, taken on Google's paths only");
        }

        @Test
        void aMissingOrWrongKeyIs401InGooglesShape() throws Exception {
            for (String[] wrong : new String[][] {{}, {"x-goog-api-key", "k-two"}}) {
                HttpResponse<String> r = h.send("POST", call("gpt-4.1", "generateContent"), HI, wrong);
                assertEquals(401, r.statusCode(), r.body());
                JsonNode e = json(r.body()).path("error");
                assertEquals(401, e.path("code").asInt(), r.body());
                assertEquals("UNAUTHENTICATED", e.path("status").asText(), r.body());
            }
            assertEquals(401, h.send("GET", "/v1/models?key=k-two", null).statusCode());
            assertEquals("UNAUTHENTICATED", json(h.send("GET", "/v1/models?key=k-two", null).body()).path("error").path("status").asText());
        }
    }

    /** What Javalin does with a path parameter followed by a literal in one segment, which decides how the routes are written. */
    static final class JavalinColonTests {
        @Test
        void aParameterFollowedByColonMethodInOneSegment() throws Exception {
            io.javalin.Javalin app = io.javalin.Javalin.create(cfg -> {
                cfg.startup.showJavalinBanner = false;
                cfg.routes.post("/models/{model}:generateContent", ctx -> ctx.result("generate " + ctx.pathParam("model")));
                cfg.routes.post("/models/{model}:countTokens", ctx -> ctx.result("count " + ctx.pathParam("model")));
            }).start("127.0.0.1", 0);
            try {
                var client = java.net.http.HttpClient.newHttpClient();
                java.util.function.Function<String, String> post = path -> {
                    try {
                        var r = client.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create("http://127.0.0.1:" + app.port() + path))
                            .POST(java.net.http.HttpRequest.BodyPublishers.noBody()).build(), java.net.http.HttpResponse.BodyHandlers.ofString());
                        return r.statusCode() + " " + r.body();
                    } catch (IOException | InterruptedException e) {
                        throw new AssertionError(e);
                    }
                };
                assertEquals("200 generate gemini-2.5-pro", post.apply("/models/gemini-2.5-pro:generateContent"));
                assertEquals("200 count gemini-3.1-pro-preview", post.apply("/models/gemini-3.1-pro-preview:countTokens"));
                assertTrue(post.apply("/models/gemini-2.5-pro:embedContent").startsWith("404"));
            } finally {
                app.stop();
            }
        }
    }

    /** The translator alone: pure JSON in and out. */
    static final class GeminiTranslatorTests {
        static final CopilotApi.Gemini.GeminiToChat.Reasoning GPT = new CopilotApi.Gemini.GeminiToChat.Reasoning(
            CopilotApi.Chat.ModelLimits.unknown("gpt-5-mini"), true);

        static CopilotApi.Gemini.GeminiToChat.Result translate(String body) {
            return CopilotApi.Gemini.GeminiToChat.request(json(body), "gpt-5-mini", GPT, false);
        }

        @Test
        void openApiSchemasBecomeJsonSchemaAtEveryDepth() {
            JsonNode in = json("""
                {"type":"OBJECT","propertyOrdering":["a","b"],"properties":{
                  "a":{"type":"STRING","enum":["x","y"],"format":"enum","nullable":true},
                  "b":{"type":"ARRAY","items":{"type":"OBJECT","properties":{"type":{"type":"INTEGER","example":3}}}},
                  "c":{"anyOf":[{"type":"NUMBER"},{"type":"BOOLEAN"}],"nullable":true}},
                 "required":["a"]}""");
            JsonNode expected = json("""
                {"type":"object","properties":{
                  "a":{"type":["string","null"],"enum":["x","y"]},
                  "b":{"type":"array","items":{"type":"object","properties":{"type":{"type":"integer"}}}},
                  "c":{"anyOf":[{"type":"number"},{"type":"boolean"},{"type":"null"}]}},
                 "required":["a"]}""");
            assertEquals(expected, CopilotApi.Gemini.GeminiToChat.jsonSchema(in));
        }

        @Test
        void generationConfigMapsToChatFields() {
            var t = translate("""
                {"contents":[{"parts":[{"text":"hi"}]}],"systemInstruction":{"parts":[{"text":"Be brief."},{"text":"Be kind."}]},
                 "generationConfig":{"temperature":0.2,"topP":0.9,"topK":40,"maxOutputTokens":100,"stopSequences":["END"],
                   "candidateCount":2,"responseMimeType":"application/json",
                   "responseSchema":{"type":"OBJECT","properties":{"n":{"type":"INTEGER"}}},
                   "thinkingConfig":{"thinkingLevel":"LOW"}},
                 "safetySettings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_NONE"}]}""");
            JsonNode c = t.chatRequest();
            assertEquals("Be brief.\n\nBe kind.", c.path("messages").get(0).path("content").asText());
            assertEquals(0.2, c.path("temperature").asDouble());
            assertEquals(0.9, c.path("top_p").asDouble());
            assertFalse(c.has("top_k"));
            assertTrue(t.notes().stream().anyMatch(n -> n.contains("topK")), t.notes().toString());
            assertEquals(100, c.path("max_completion_tokens").asInt(), c.toString());
            assertEquals("[\"END\"]", c.path("stop").toString());
            assertEquals(2, c.path("n").asInt());
            assertEquals("json_schema", c.path("response_format").path("type").asText());
            assertEquals("integer", c.path("response_format").path("json_schema").path("schema").path("properties").path("n").path("type").asText());
            assertEquals("low", c.path("reasoning_effort").asText(), c.toString());
            assertFalse(c.toString().contains("safety"), c.toString());
        }

        @Test
        void toolConfigModesBecomeToolChoice() {
            String tools = "\"tools\":[{\"functionDeclarations\":[{\"name\":\"a\"},{\"name\":\"b\"}]},{\"googleSearch\":{}},{\"codeExecution\":{}}]";
            String base = "{\"contents\":[{\"parts\":[{\"text\":\"hi\"}]}]," + tools;
            var any = translate(base + ",\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\",\"allowedFunctionNames\":[\"b\"]}}}");
            assertEquals("b", any.chatRequest().path("tool_choice").path("function").path("name").asText(), any.chatRequest().toString());
            assertEquals(1, any.chatRequest().path("tools").size());
            assertEquals(2, any.dropped().size(), "the built-in tools are dropped, each with a line: " + any.dropped());
            assertEquals("required", translate(base + ",\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\"}}}").chatRequest().path("tool_choice").asText());
            assertEquals("none", translate(base + ",\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"NONE\"}}}").chatRequest().path("tool_choice").asText());
            assertFalse(translate(base + "}").chatRequest().has("tool_choice"));
            assertEquals("object", translate(base + "}").chatRequest().path("tools").path(0).path("function").path("parameters").path("type").asText());
        }

        @Test
        void aStreamMapsFinishReasonsAndUsage() {
            var m = new CopilotApi.Gemini.ChatStreamToGemini("gpt-4.1", false, true, fixedIds());
            List<CopilotApi.NamedEvent> out = new ArrayList<>(m.onChunk(json(
                "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"length\"}],"
                    + "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":7,\"total_tokens\":17,\"prompt_tokens_details\":{\"cached_tokens\":4},"
                    + "\"completion_tokens_details\":{\"reasoning_tokens\":3}}}")));
            out.addAll(m.finish());
            JsonNode last = out.get(out.size() - 1).data();
            assertEquals("MAX_TOKENS", last.path("candidates").path(0).path("finishReason").asText());
            assertEquals(json("{\"promptTokenCount\":10,\"candidatesTokenCount\":4,\"thoughtsTokenCount\":3,\"cachedContentTokenCount\":4,"
                + "\"totalTokenCount\":17}"), last.path("usageMetadata"));
            assertEquals("SAFETY", CopilotApi.Gemini.ChatStreamToGemini.finishReason(List.of("content_filter")));
            assertEquals("STOP", CopilotApi.Gemini.ChatStreamToGemini.finishReason(List.of("tool_calls")));
            assertTrue(m.finish().isEmpty() && m.done(), "nothing after the end");
        }

        @Test
        void withCandidateCountEachChoiceIsItsOwnCandidate() {
            var m = new CopilotApi.Gemini.ChatStreamToGemini("gpt-4.1", false, false, fixedIds());
            List<CopilotApi.NamedEvent> out = new ArrayList<>(m.onChunk(json("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"}},"
                + "{\"index\":1,\"delta\":{\"content\":\"B\"},\"finish_reason\":\"stop\"}]}")));
            out.addAll(m.finish());
            JsonNode first = out.get(0).data().path("candidates");
            assertEquals("A", first.get(0).path("content").path("parts").get(0).path("text").asText());
            assertEquals(1, first.get(1).path("index").asInt());
            assertEquals("B", first.get(1).path("content").path("parts").get(0).path("text").asText());
            assertEquals(2, out.get(out.size() - 1).data().path("candidates").size(), "both candidates finish");
            // a whole answer: its chunks through the same machine, the events folded
            var whole = new CopilotApi.Gemini.ChatStreamToGemini("gpt-4.1", false, false, fixedIds());
            List<CopilotApi.Streaming.Frame> frames = new ArrayList<>();
            for (JsonNode chunk : CopilotApi.Streaming.ChatChunks.of(json("{\"choices\":[{\"index\":0,\"message\":{\"content\":\"A\"},"
                    + "\"finish_reason\":\"stop\"},{\"index\":1,\"message\":{\"content\":\"B\"},\"finish_reason\":\"length\"}]}"))) {
                whole.onChunk(chunk).forEach(e -> frames.add(whole.frame(e)));
            }
            whole.finish().forEach(e -> frames.add(whole.frame(e)));
            JsonNode folded = CopilotApi.Gemini.GeminiEvents.response(frames);
            assertEquals("B", folded.path("candidates").get(1).path("content").path("parts").get(0).path("text").asText(), folded.toString());
            assertEquals("MAX_TOKENS", folded.path("candidates").get(1).path("finishReason").asText(), folded.toString());
        }

        @Test
        void copilotsOwnSignatureGoesBackAsItCame() {
            var t = translate("{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"a\"}]},{\"role\":\"model\",\"parts\":[{\"text\":\"b\","
                + "\"thoughtSignature\":\"raw-sig\"}]},{\"role\":\"user\",\"parts\":[{\"text\":\"c\"}]}]}");
            JsonNode assistant = t.chatRequest().path("messages").get(1);
            assertEquals("raw-sig", assistant.path("reasoning_opaque").asText());
            assertFalse(assistant.has("reasoning_text"));
            String packed = CopilotApi.Gemini.ThoughtSignatures.pack("why", "sig");
            assertEquals(List.of("why", "sig"), List.of(CopilotApi.Gemini.ThoughtSignatures.unpack(packed).orElseThrow()));
            assertEquals("sig", CopilotApi.Gemini.ThoughtSignatures.pack("", "sig"));
            assertTrue(CopilotApi.Gemini.ThoughtSignatures.unpack(CopilotApi.Gemini.ThoughtSignatures.PREFIX + "!!").isEmpty());
        }

        static CopilotApi.Chat.IdClock fixedIds() {
            return new CopilotApi.Chat.IdClock() {
                @Override
                public String id(String prefix) {
                    return prefix + "fixed";
                }

                @Override
                public long epochSeconds() {
                    return 0;
                }
            };
        }
    }

    /** The real @google/genai SDK (tests/sdk) against copilot-api started as users start it, on the stub. */
    static final class GeminiSdkTests extends RecipeClients {
        @Override
        String folder() {
            return "sdk";
        }

        @Override
        StubUpstream newStub() throws IOException {
            // a pause between the stub's chunks, so that a buffered stream shows (the script checks the arrival times)
            return StubUpstream.start().streamDelayMs(40);
        }

        void node(String model) throws Exception {
            CopilotApiTests.SdkRunner.Result r = CopilotApiTests.SdkRunner.node(clients, "gemini-e2e.mjs", Map.of("BASE_URL", server.baseUrl(), "MODEL", model));
            System.out.print(r.output());
            assertEquals(0, r.exit(), r.output());
            assertNotNull(stub.last("/chat/completions"));
            String log = java.nio.file.Files.readString(server.log);
            assertTrue(log.contains("POST /v1/models/" + model + ":generateContent") && log.contains("POST /v1/models/" + model + ":streamGenerateContent"),
                "@google/genai 3.x calls /v1 by default:\n" + log);
        }

        @Test
        void genaiSdkOnAGeminiModel() throws Exception {
            node("gemini-2.5-pro");
        }

        @Test
        void genaiSdkOnAClaudeModel() throws Exception {
            node("claude-sonnet-4.5");
        }

        @Test
        void genaiSdkOnAGptModel() throws Exception {
            node("gpt-4.1");
        }
    }
}
