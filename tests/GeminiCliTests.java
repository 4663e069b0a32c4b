package copilotapi;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * The README's Gemini CLI recipe with the real CLI (@google/gemini-cli, pinned in tests/clients), headless, against
 * copilot-api started as the README says and the stub: a plain prompt and a shell-tool loop on a Gemini, a GPT and a
 * Claude model; the CLI after `setup gemini-cli --write` with nothing but HOME; and what a session bills (its router
 * call is background work, its prompt one person's request).
 */
class GeminiCliTests extends RecipeClients {
    /** What the stub's shell call prints; it comes back in the model's last answer. */
    static final String TOOL_OUTPUT = "copilot-api-tool-loop";

    /** A fresh HOME holding ~/.gemini/settings.json with the given text, and an empty working directory in it. */
    static Path home(String settings) throws Exception {
        Path home = Files.createTempDirectory("gemini-home");
        Files.writeString(Files.createDirectories(home.resolve(".gemini")).resolve("settings.json"), settings);
        Files.createDirectories(home.resolve("work"));
        return home;
    }

    /** The recipe's hand-written settings: API-key auth, so that the base URL does not select the gateway auth. */
    static final String RECIPE_SETTINGS = "{\"security\": {\"auth\": {\"selectedType\": \"gemini-api-key\"}}}\n";

    /**
     * gemini -p PROMPT -o json --approval-mode yolo in HOME/work with only PATH and the given variables; the folder is
     * trusted for this run with --skip-trust (headless refuses an untrusted folder with exit 55). Its JSON result.
     */
    JsonNode gemini(Path home, Map<String, String> env, String prompt, String... options) throws Exception {
        Map<String, String> all = new HashMap<>(env);
        all.put("HOME", home.toString());
        List<String> cmd = new ArrayList<>(List.of(clients.resolve("node_modules/.bin/gemini").toString(), "--skip-trust"));
        cmd.addAll(List.of(options));
        cmd.addAll(List.of("-p", prompt, "-o", "json", "--approval-mode", "yolo"));
        CopilotApiTests.SdkRunner.Result r = ClientRecipeTests.isolated(home.resolve("work"), all, cmd.toArray(String[]::new));
        System.out.println(r.output());
        assertEquals(0, r.exit(), r.output());
        String out = r.output();
        return CopilotApiTests.json(out.substring(out.indexOf("{\n  \"session_id\"")));
    }

    /** The recipe's environment for this server. */
    Map<String, String> recipeEnv() {
        return Map.of("GOOGLE_GEMINI_BASE_URL", server.baseUrl(), "GEMINI_API_KEY", "unused");
    }

    /** The models Copilot was asked for, in order, on any of its chat endpoints. */
    List<String> upstreamModels() {
        List<String> models = new ArrayList<>();
        for (StubUpstream.Recorded r : stub.requests()) {
            if (r.matches("/chat/completions") || r.matches("/responses") || r.matches("/v1/messages")) models.add(r.json().path("model").asText());
        }
        return models;
    }

    @Test
    void aPlainPromptOnAGeminiAGptAndAClaudeModel() throws Exception {
        Path home = home(RECIPE_SETTINGS);
        for (String model : List.of("gemini-2.5-pro", "gpt-5.1-codex", "claude-sonnet-4.5")) {
            stub.clear();
            JsonNode result = gemini(home, recipeEnv(), StubUpstream.NO_TOOLS_MARKER + " Say hello.", "-m", model);
            assertEquals("Hello from " + model + ".", result.path("response").asText(), model + ": " + result);
            assertEquals(List.of(model), upstreamModels(), "one call, on the model asked for");
            assertEquals(0, result.path("stats").path("tools").path("totalCalls").asInt(), result.toString());
        }
    }

    @Test
    void aShellToolLoopOnAGeminiAGptAndAClaudeModel() throws Exception {
        Path home = home(RECIPE_SETTINGS);
        for (String model : List.of("gemini-2.5-pro", "gpt-5.1-codex", "claude-sonnet-4.5")) {
            stub.clear();
            JsonNode result = gemini(home, recipeEnv(), "Run a command, then tell me what it printed.", "-m", model);
            JsonNode shell = result.path("stats").path("tools").path("byName").path("run_shell_command");
            assertEquals(1, shell.path("success").asInt(), model + ": the CLI ran the stub's shell call: " + result);
            assertTrue(result.path("response").asText().startsWith("Tool said: ") && result.path("response").asText().contains(TOOL_OUTPUT),
                model + ": the command's output went back to the model: " + result.path("response"));
            assertEquals(List.of(model, model), upstreamModels(), "the call and the answer to its result, on the model asked for");
        }
    }

    /** After `setup gemini-cli --write`, the CLI runs a tool loop with nothing but HOME; the user's own settings survive. */
    @Test
    void geminiCliAfterSetupWrite() throws Exception {
        Path home = home("{\"ui\": {\"theme\": \"GitHub\"}, \"security\": {\"auth\": {\"selectedType\": \"oauth-personal\"}}}\n");
        ClientRecipeTests.setupWrite(stub, server, home, "gemini-cli", "--model", "claude-sonnet-4.5");
        stub.clear();
        JsonNode result = gemini(home, Map.of(), "Run a command, then tell me what it printed.");
        assertTrue(result.path("response").asText().contains(TOOL_OUTPUT), result.toString());
        assertEquals(List.of("claude-sonnet-4.5", "claude-sonnet-4.5"), upstreamModels());
        JsonNode settings = CopilotApiTests.json(Files.readString(home.resolve(".gemini/settings.json")));
        assertEquals("GitHub", settings.path("ui").path("theme").asText(), "the user's setting survives: " + settings);
    }

    /**
     * A headless session on the default model (auto) starts with the CLI's router call (non-streamed, a JSON schema, no
     * tools): background work on the free model. The prompt is one person's request on the model it asked for, and a
     * tool loop's second call is the agent's: each session bills exactly one premium request.
     */
    @Test
    void aHeadlessSessionBillsOnePersonsPrompt() throws Exception {
        stub.checkInitiator(true);
        try {
            Path home = home(RECIPE_SETTINGS);
            for (String prompt : List.of(StubUpstream.NO_TOOLS_MARKER + " Say hello.", "Run a command, then tell me what it printed.")) {
                stub.clear();
                JsonNode before = stats();
                JsonNode result = gemini(home, recipeEnv(), prompt);
                JsonNode after = stats();
                assertTrue(result.path("stats").path("models").findValues("roles").stream().anyMatch(r -> r.has("utility_router")),
                    "the CLI made its router call: " + result);
                List<StubUpstream.Recorded> calls = stub.requests().stream().filter(r -> r.matches("/chat/completions")).toList();
                assertEquals("gpt-4.1", calls.get(0).json().path("model").asText(), "the router call went to the free model");
                assertTrue(calls.stream().skip(1).allMatch(r -> r.json().path("model").asText().equals("gemini-2.5-pro")),
                    "the CLI's flash and pro names reach the catalog's Gemini");
                assertEquals(1, calls.stream().filter(r -> !r.json().path("model").asText().equals("gpt-4.1")
                    && "user".equals(r.header("x-initiator"))).count(), "one person's prompt: " + prompt);
                assertEquals(1.0, units(after) - units(before), 1e-9, "one premium request (gemini-2.5-pro, multiplier 1): " + prompt);
            }
        } finally {
            stub.checkInitiator(false);
        }
    }

    JsonNode stats() throws Exception {
        HttpResponse<String> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(server.baseUrl() + "/stats")).build(),
            HttpResponse.BodyHandlers.ofString());
        assertEquals(200, r.statusCode(), r.body());
        return CopilotApiTests.json(r.body());
    }

    static double units(JsonNode stats) {
        return stats.path("premium").path("units").asDouble();
    }
}
