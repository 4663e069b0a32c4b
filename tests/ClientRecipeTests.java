package copilotapi;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

/**
 * The README's "Set-up recipes", tried as users run them: copilot-api started with the README command
 * against the stub, and each client (installed from tests/clients/ with npm ci) configured as the recipe says.
 * The assertions read the stub's fixed answers ("Hello from MODEL.", "Tool said: ...") and what the stub
 * recorded, so a recipe that stops reaching the route it documents fails here.
 */
class ClientRecipeTests extends RecipeClients {
    CopilotApiTests.SdkRunner.Result node(String script, String baseUrl) throws Exception {
        stub.clear();
        CopilotApiTests.SdkRunner.Result r = CopilotApiTests.SdkRunner.node(clients, script, Map.of("BASE_URL", baseUrl));
        System.out.print(r.output());
        assertEquals(0, r.exit(), r.output());
        return r;
    }

    /** The recipe's ~/.codex/config.toml, with the test server's port, in a fresh CODEX_HOME. */
    Path codexHome() throws Exception {
        Path home = Files.createTempDirectory("codex-home");
        Path codex = Files.createDirectories(home.resolve(".codex"));
        Files.writeString(codex.resolve("config.toml"), """
            model_provider = "copilot-api"
            model = "gpt-5.1-codex"

            [model_providers.copilot-api]
            name = "copilot-api"
            base_url = "%s/v1"
            wire_api = "responses"
            env_key = "COPILOT_API_KEY"
            """.formatted(server.baseUrl()));
        Files.writeString(codex.resolve("gpt41.config.toml"), "model = \"gpt-4.1\"\n");
        return home;
    }

    /** codex exec in an empty directory; the stub asks for a shell command, Codex runs it and sends its output back. */
    CopilotApiTests.SdkRunner.Result codexExec(String... options) throws Exception {
        Path home = codexHome();
        Path work = Files.createDirectories(home.resolve("work"));
        Map<String, String> env = new HashMap<>(Map.of(
            "HOME", home.toString(),
            "CODEX_HOME", home.resolve(".codex").toString(),
            "COPILOT_API_KEY", "unused"));
        java.util.List<String> cmd = new java.util.ArrayList<>(java.util.List.of(
            clients.resolve("node_modules/.bin/codex").toString(), "exec", "--skip-git-repo-check"));
        cmd.addAll(java.util.List.of(options));
        cmd.add("Run a command, then tell me what it printed.");
        stub.clear();
        CopilotApiTests.SdkRunner.Result r = CopilotApiTests.SdkRunner.run(work, env, Duration.ofMinutes(2), cmd.toArray(String[]::new));
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("Tool said: "), "the tool's output came back to the model: " + r.output());
        return r;
    }

    /** The second turn of a tool loop carries the tool's result back. */
    static void carriesToolOutput(StubUpstream.Recorded last, String field, String value) {
        assertTrue(last != null, "no request reached the stub");
        boolean found = false;
        for (JsonNode item : last.json().path(field)) {
            found |= item.path(field.equals("input") ? "type" : "role").asText().equals(value);
        }
        assertTrue(found, "the last request has a " + value + " item: " + last.body());
    }

    @Test
    void codexExecOnAResponsesOnlyModel() throws Exception {
        codexExec();
        assertTrue(stub.count("/responses") >= 2, "both turns on Copilot's /responses: " + stub.count("/responses"));
        assertEquals(0, stub.count("/chat/completions"));
        StubUpstream.Recorded last = stub.last("/responses");
        assertEquals("gpt-5.1-codex", last.json().path("model").asText());
        carriesToolOutput(last, "input", "function_call_output");
    }

    @Test
    void codexExecWithAProfileOnAChatModel() throws Exception {
        codexExec("-p", "gpt41");
        assertTrue(stub.count("/chat/completions") >= 2, "copilot-api translated both turns to chat: " + stub.count("/chat/completions"));
        assertEquals(0, stub.count("/responses"));
        StubUpstream.Recorded last = stub.last("/chat/completions");
        assertEquals("gpt-4.1", last.json().path("model").asText());
        carriesToolOutput(last, "messages", "tool");
    }

    @Test
    void vercelAiSdk() throws Exception {
        node("ai-sdk.mjs", server.baseUrl() + "/v1");
        StubUpstream.Recorded last = stub.last("/responses");
        assertFalse(last.json().path("store").asBoolean(true), "the recipe's store: false reached Copilot: " + last.body());
        assertFalse(last.body().contains("item_reference"), last.body());
        carriesToolOutput(last, "input", "function_call_output");
        assertTrue(stub.count("/chat/completions") >= 4, "openai.chat and the translated chat model: " + stub.count("/chat/completions"));
    }

    @Test
    void langChain() throws Exception {
        // LangChain JS 1.x (langsmith) calls the global crypto, which Node.js 18 lacks: its tool calls fail there
        CopilotApiTests.SdkRunner.Result version = CopilotApiTests.SdkRunner.run(clients, Map.of(), Duration.ofSeconds(30), "node", "--version");
        int major = Integer.parseInt(version.output().strip().replaceAll("^v(\\d+).*", "$1"));
        Assumptions.assumeTrue(major >= 20, "LangChain JS needs Node.js 20 or newer, found " + version.output().strip());
        node("langchain.mjs", server.baseUrl());
        assertTrue(stub.count("/chat/completions") >= 4, "ChatOpenAI: " + stub.count("/chat/completions"));
        assertTrue(stub.count("/responses") >= 1, "useResponsesApi: " + stub.count("/responses"));
        StubUpstream.Recorded last = stub.last("/v1/messages");
        assertTrue(last != null && last.json().path("model").asText().equals("claude-sonnet-4.5"), "ChatAnthropic on the native route");
        carriesToolOutput(last, "messages", "user");
        assertTrue(last.body().contains("\"tool_result\""), last.body());
    }

    /** A client run with nothing but PATH and the given variables: everything else has to come from its own files. */
    static CopilotApiTests.SdkRunner.Result isolated(Path dir, Map<String, String> env, String... cmd) throws Exception {
        Path log = Files.createTempFile("run", ".log");
        ProcessBuilder pb = new ProcessBuilder(cmd).directory(dir.toFile()).redirectErrorStream(true).redirectOutput(log.toFile());
        pb.environment().clear();
        pb.environment().put("PATH", System.getenv("PATH"));
        pb.environment().putAll(env);
        Process p = pb.start();
        p.getOutputStream().close();
        if (!p.waitFor(3, java.util.concurrent.TimeUnit.MINUTES)) {
            p.destroyForcibly();
            return new CopilotApiTests.SdkRunner.Result(-1, Files.readString(log) + "\n(timed out)");
        }
        return new CopilotApiTests.SdkRunner.Result(p.exitValue(), Files.readString(log));
    }

    /** `copilot-api setup CLIENT --write --url (this server)` in HOME, with the stub's login for the catalog. */
    void setupWrite(Path home, String... args) throws Exception {
        setupWrite(stub, server, home, args);
    }

    static void setupWrite(StubUpstream stub, CopilotApiTests.SdkRunner.ServerProcess server, Path home, String... args) throws Exception {
        Map<String, String> env = CopilotApiTests.CliTests.env(stub, Files.createTempDirectory("data"));
        env.put("HOME", home.toString());
        env.put("COPILOT_API_GITHUB_TOKEN", StubUpstream.VALID_GITHUB_TOKEN);
        java.util.List<String> all = new java.util.ArrayList<>(java.util.List.of("setup"));
        all.addAll(java.util.List.of(args));
        all.addAll(java.util.List.of("--write", "--url", server.baseUrl()));
        CopilotApiTests.CliTests.Run r = CopilotApiTests.CliTests.cli(env, all.toArray(String[]::new));
        System.out.print(r.out());
        assertEquals(0, r.exit(), r.out() + r.err());
    }

    /** tests/FOLDER with its pinned npm packages installed (once). */
    static Path installed(String folder) throws Exception {
        Path dir = CopilotApiTests.SdkRunner.repo().resolve("tests").resolve(folder);
        CopilotApiTests.SdkRunner.npmInstall(dir);
        return dir;
    }

    /** A file the user had before setup, at that path under home. */
    static Path userFile(Path home, String path, String text) throws Exception {
        Path file = home.resolve(path);
        Files.createDirectories(file.getParent());
        return Files.writeString(file, text);
    }

    /** The client run in dir with only HOME set (and PATH), on a cleared stub; it must succeed. */
    CopilotApiTests.SdkRunner.Result clientAfterSetup(Path home, Path dir, String... cmd) throws Exception {
        stub.clear();
        CopilotApiTests.SdkRunner.Result r = isolated(dir, Map.of("HOME", home.toString()), cmd);
        System.out.print(r.output());
        assertEquals(0, r.exit(), r.output());
        return r;
    }

    /** After `setup claude-code --write`, Claude Code runs a tool loop through copilot-api with only HOME set; the user's key survives. */
    @Test
    void claudeCodeAfterSetupWrite() throws Exception {
        Path sdk = installed("sdk");
        Path home = Files.createTempDirectory("claude-setup-home");
        Path settings = userFile(home, ".claude/settings.json", "{\"env\": {\"MY_SETTING\": \"kept\"}}\n");
        setupWrite(home, "claude-code", "--model", "claude-sonnet-4.5");
        CopilotApiTests.SdkRunner.Result r = clientAfterSetup(home, home, sdk.resolve("node_modules/.bin/claude").toString(),
            "-p", "Use the Bash tool to print a marker, then tell me what it printed.", "--output-format", "json", "--allowedTools", "Bash");
        assertTrue(r.output().contains("Tool said: " + CopilotApiTests.SdkTests.MARKER), "the tool ran and its output came back: " + r.output());
        assertTrue(stub.count("/v1/messages") >= 2, "both turns reached Copilot's Messages API: " + stub.count("/v1/messages"));
        assertEquals("claude-sonnet-4.5", stub.last("/v1/messages").json().path("model").asText());
        assertEquals("kept", CopilotApiTests.json(Files.readString(settings)).path("env").path("MY_SETTING").asText());
    }

    /** After `setup codex --write`, `codex exec -p copilot-api` runs a tool loop with only HOME set; config.toml is left as it was. */
    @Test
    void codexAfterSetupWrite() throws Exception {
        Path home = Files.createTempDirectory("codex-setup-home");
        Path config = userFile(home, ".codex/config.toml", "# the user's own\nhide_agent_reasoning = true\n");
        setupWrite(home, "codex");
        CopilotApiTests.SdkRunner.Result r = clientAfterSetup(home, Files.createDirectories(home.resolve("work")),
            clients.resolve("node_modules/.bin/codex").toString(), "exec", "--skip-git-repo-check", "-p", "copilot-api",
            "Run a command, then tell me what it printed.");
        assertTrue(r.output().contains("Tool said: "), "the tool's output came back to the model: " + r.output());
        assertTrue(stub.count("/responses") >= 2, "both turns on Copilot's /responses: " + stub.count("/responses"));
        assertEquals("gpt-5.1-codex", stub.last("/responses").json().path("model").asText());
        assertEquals("# the user's own\nhide_agent_reasoning = true\n", Files.readString(config));
    }

    /**
     * After `setup opencode --write`, `opencode run` goes through a tool call and its result with only HOME set; the
     * user's own provider, with its key, survives. opencode comes from tests/opencode/, installed on first use here
     * only: its platform binaries weigh about 120 MB.
     */
    @Test
    void opencodeAfterSetupWrite() throws Exception {
        Path opencode = installed("opencode");
        Path home = Files.createTempDirectory("opencode-setup-home");
        Path config = userFile(home, ".config/opencode/opencode.json",
            "{\"provider\": {\"mine\": {\"npm\": \"@ai-sdk/openai-compatible\", \"options\": {\"apiKey\": \"my-own-key\"}}}}\n");
        setupWrite(home, "opencode", "--model", "gpt-4.1");
        CopilotApiTests.SdkRunner.Result r = clientAfterSetup(home, Files.createDirectories(home.resolve("work")),
            opencode.resolve("node_modules/.bin/opencode").toString(), "run", "Run a command, then tell me what it printed.");
        assertTrue(r.output().contains("Tool said: "), "the tool ran and its output came back to the model: " + r.output());
        assertTrue(stub.count("/chat/completions") >= 2, "both turns on chat completions: " + stub.count("/chat/completions"));
        StubUpstream.Recorded last = stub.last("/chat/completions");
        assertEquals("gpt-4.1", last.json().path("model").asText());
        carriesToolOutput(last, "messages", "tool");
        JsonNode kept = CopilotApiTests.json(Files.readString(config)).path("provider").path("mine");
        assertEquals("my-own-key", kept.path("options").path("apiKey").asText(), "the user's own provider and key survive: " + kept);
    }

    /** Codex with supports_websockets = true asks for a WebSocket first; copilot-api's 426 sends it to HTTP without reconnects. */
    @Test
    void codexWithWebSocketsOnFallsBackToHttpAtOnce() throws Exception {
        Path home = Files.createTempDirectory("codex-ws-home");
        Files.writeString(Files.createDirectories(home.resolve(".codex")).resolve("config.toml"), """
            model_provider = "copilot-api"
            model = "gpt-5.1-codex"

            [model_providers.copilot-api]
            name = "copilot-api"
            base_url = "%s/v1"
            wire_api = "responses"
            supports_websockets = true
            """.formatted(server.baseUrl()));
        Path work = Files.createDirectories(home.resolve("work"));
        long logStart = Files.size(server.log);
        stub.clear();
        long started = System.nanoTime();
        CopilotApiTests.SdkRunner.Result r = isolated(work, Map.of("HOME", home.toString()), clients.resolve("node_modules/.bin/codex").toString(),
            "exec", "--skip-git-repo-check", "Run a command, then tell me what it printed.");
        long seconds = Duration.ofNanos(System.nanoTime() - started).toSeconds();
        System.out.print(r.output());
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("Tool said: "), r.output());
        assertTrue(stub.count("/responses") >= 2, "both turns went over HTTP: " + stub.count("/responses"));
        String log = Files.readString(server.log).substring((int) logStart);
        java.util.List<String> handshakes = log.lines().filter(l -> l.contains("GET /v1/responses")).toList();
        System.out.println("handshakes:\n" + String.join("\n", handshakes) + "\n(" + seconds + " s)");
        assertFalse(handshakes.isEmpty(), "Codex tried the WebSocket: " + log);
        assertTrue(handshakes.stream().allMatch(l -> l.contains("426")), "each handshake was answered 426: " + handshakes);
        assertTrue(handshakes.size() <= 2, "no reconnects after a 426: " + handshakes);
    }

    /** The README's curl lines, as written but for the port. */
    @Test
    void curl() throws Exception {
        Assumptions.assumeTrue(Files.isExecutable(Path.of("/usr/bin/curl")) || Files.isExecutable(Path.of("/bin/curl")), "no curl");
        String chat = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}";
        String stream = "{\"model\":\"gpt-4.1\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}";
        String messages = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":256,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}";
        String url = server.baseUrl();
        assertTrue(curl("-sS", url + "/v1/chat/completions", "-H", "content-type: application/json", "-d", chat)
            .contains("\"content\":\"Hello from gpt-4.1.\""));
        String events = curl("-sSN", url + "/v1/chat/completions", "-H", "content-type: application/json", "-d", stream);
        assertTrue(events.contains("data: [DONE]") && events.contains("\"delta\""), events);
        assertTrue(curl("-sS", url + "/v1/messages", "-H", "x-api-key: unused", "-H", "anthropic-version: 2023-06-01",
            "-H", "content-type: application/json", "-d", messages).contains("\"text\":\"Hello from claude-sonnet-4.5.\""));
        assertEquals("415", curl("-s", "-o", "/dev/null", "-w", "%{http_code}", url + "/v1/chat/completions", "-d", chat));
    }

    String curl(String... args) throws Exception {
        String[] cmd = new String[args.length + 1];
        cmd[0] = "curl";
        System.arraycopy(args, 0, cmd, 1, args.length);
        CopilotApiTests.SdkRunner.Result r = CopilotApiTests.SdkRunner.run(clients, Map.of(), Duration.ofSeconds(30), cmd);
        assertEquals(0, r.exit(), r.output());
        return r.output();
    }
}

/**
 * The npm clients of one folder under tests/ (installed once), the stub, and copilot-api started against it as users
 * start it: one set per test class.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
abstract class RecipeClients {
    Path clients;
    StubUpstream stub;
    CopilotApiTests.SdkRunner.ServerProcess server;

    /** The folder under tests/ whose package.json pins the clients: tests/clients unless a class says otherwise. */
    String folder() {
        return "clients";
    }

    /** The stub the server is pointed at; a class may start it with other switches. */
    StubUpstream newStub() throws java.io.IOException {
        return StubUpstream.start();
    }

    @BeforeAll
    void up() throws Exception {
        clients = CopilotApiTests.SdkRunner.repo().resolve("tests").resolve(folder());
        CopilotApiTests.SdkRunner.npmInstall(clients);
        stub = newStub();
        server = CopilotApiTests.SdkRunner.startServer(stub);
    }

    @AfterAll
    void down() {
        if (server != null) server.close();
        if (stub != null) stub.close();
    }
}
