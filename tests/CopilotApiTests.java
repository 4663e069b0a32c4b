///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DESCRIPTION The copilot-api test suite: JUnit 5 against an in-process stub of GitHub and Copilot.
//SOURCES ../copilot-api.java
//SOURCES StubUpstream.java
//SOURCES AnthropicTranslatorTests.java
//SOURCES ResponsesTranslatorTests.java
//SOURCES GeminiTests.java
//SOURCES ClientRecipeTests.java
//SOURCES GeminiCliTests.java
//SOURCES BillingTests.java
//SOURCES BackgroundTests.java
//SOURCES StoreTests.java
//SOURCES UsageBasedTests.java
//SOURCES CostTests.java
//SOURCES ServiceTests.java
//SOURCES CacheTests.java
//SOURCES CatalogFaultTests.java
//DEPS org.junit.platform:junit-platform-console-standalone:1.13.4
// UTF-8 sources, and UTF-8 as the default charset of the test JVM, whatever the locale it runs under.
//COMPILE_OPTIONS -encoding UTF-8
//JAVA_OPTIONS -Dfile.encoding=UTF-8

package copilotapi;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.junit.jupiter.api.TestInstance;
import org.junit.platform.engine.TestExecutionResult;
import org.junit.platform.engine.discovery.DiscoverySelectors;
import org.junit.platform.launcher.Launcher;
import org.junit.platform.launcher.LauncherDiscoveryRequest;
import org.junit.platform.launcher.TestExecutionListener;
import org.junit.platform.launcher.TestIdentifier;
import org.junit.platform.launcher.core.LauncherDiscoveryRequestBuilder;
import org.junit.platform.launcher.core.LauncherFactory;
import org.junit.platform.launcher.listeners.SummaryGeneratingListener;
import org.junit.platform.launcher.listeners.TestExecutionSummary;

/**
 * Runs every test class below with the JUnit Platform launcher and prints one line per test and a closing
 * "tests: N passed, N failed" line. Run from the repository root: {@code ./jbang tests/CopilotApiTests.java}.
 * Optional arguments: class-name filters (e.g. {@code ChatStream}) to run only matching classes.
 */
class CopilotApiTests {

    static final List<Class<?>> SUITES = List.of(
        DeviceFlowTests.class,
        TokenStoreTests.class,
        TokenLifecycleTests.class,
        ModelsTests.class,
        ChatFixtureTests.class,
        StreamFixtureTests.class,
        SseReaderTests.class,
        ChatBehaviourTests.class,
        EmbeddingsTests.class,
        ModelMapRouteTests.class,
        ErrorTests.class,
        ModelResolverTests.class,
        AnthropicTranslatorTests.class,
        ResponsesTranslatorTests.class,
        AnthropicNativeTests.class,
        CountTokensTests.class,
        ModelNamesTests.class,
        EmptyCatalogNamesTests.class,
        ClaudeVersionTests.class,
        LongContextTests.class,
        LongContextLimitsTests.class,
        ResponsesHygieneTests.class,
        ResponsesRouteTests.class,
        StoreTests.class,
        ClaudeCodeSetupTests.class,
        SetupTests.class,
        ServiceTests.class,
        ApiKeyTests.class,
        BrowserSafetyTests.class,
        InputValidationTests.class,
        PacingTests.class,
        ManualApprovalTests.class,
        StatsTests.class,
        BillingTests.class,
        BackgroundTests.class,
        UsageBasedTests.class,
        CostTests.class,
        CacheTests.class,
        DashboardTests.class,
        GracefulStopTests.class,
        ShutdownTests.class,
        UpstreamTimeoutTests.class,
        CatalogFaultTests.class,
        StreamBreakTests.class,
        ClientDisconnectTests.class,
        SlowReaderTests.class,
        StreamFlushTests.class,
        TerminalTests.class,
        StaleConnectionTests.class,
        ProxyTests.class,
        TlsTests.class,
        CliTests.class,
        SdkTests.class,
        ClientRecipeTests.class,
        GeminiTests.GeminiRouteTests.class,
        GeminiTests.GeminiApiKeyTests.class,
        GeminiTests.GeminiTranslatorTests.class,
        GeminiTests.JavalinColonTests.class,
        GeminiTests.GeminiSdkTests.class,
        GeminiCliTests.class,
        ExportTests.class);

    public static void main(String... args) {
        CopilotApi.Logs.configure(false);
        System.setProperty("org.slf4j.simpleLogger.log.copilot-api", "warn");
        List<Class<?>> selected = SUITES.stream()
            .filter(c -> args.length == 0 || Stream.of(args).anyMatch(a -> c.getSimpleName().contains(a))).toList();
        LauncherDiscoveryRequest request = LauncherDiscoveryRequestBuilder.request()
            .selectors(selected.stream().map(DiscoverySelectors::selectClass).toList())
            // no test may hang a CI run: anything still running after ten minutes fails
            .configurationParameter("junit.jupiter.execution.timeout.default", "10 m")
            .configurationParameter("junit.jupiter.execution.timeout.thread.mode.default", "SEPARATE_THREAD")
            .build();
        Launcher launcher = LauncherFactory.create();
        SummaryGeneratingListener summary = new SummaryGeneratingListener();
        launcher.execute(request, new LinePrinter(), summary);
        TestExecutionSummary s = summary.getSummary();
        for (TestExecutionSummary.Failure f : s.getFailures()) {
            System.out.println("\nFAILED " + f.getTestIdentifier().getDisplayName() + ":");
            f.getException().printStackTrace(System.out);
        }
        long failed = s.getTestsFailedCount() + s.getContainersFailedCount();
        System.out.printf("%ntests: %d passed, %d failed, %d skipped%n", s.getTestsSucceededCount(), failed,
            s.getTestsSkippedCount() + s.getTestsAbortedCount());
        System.exit(failed == 0 && s.getTestsSucceededCount() > 0 ? 0 : 1);
    }

    /** One line per finished test, so a CI log shows what ran. */
    static final class LinePrinter implements TestExecutionListener {
        @Override
        public void executionFinished(TestIdentifier id, TestExecutionResult result) {
            if (!id.isTest() && result.getStatus() == TestExecutionResult.Status.SUCCESSFUL) return;
            if (result.getStatus() == TestExecutionResult.Status.ABORTED) {
                // an assumption that does not hold here: not run, and said why
                System.out.println("skip " + id.getDisplayName().replace("()", "") + "  [" + parent(id) + "]: "
                    + result.getThrowable().map(Throwable::getMessage).orElse("aborted"));
                return;
            }
            String mark = result.getStatus() == TestExecutionResult.Status.SUCCESSFUL ? "ok  " : "FAIL";
            System.out.println(mark + " " + id.getDisplayName().replace("()", "") + "  [" + parent(id) + "]");
        }

        @Override
        public void executionSkipped(TestIdentifier id, String reason) {
            System.out.println("skip " + id.getDisplayName() + ": " + reason);
        }

        private static String parent(TestIdentifier id) {
            String uid = id.getUniqueId();
            int i = uid.indexOf("[class:");
            if (i < 0) return "";
            String cls = uid.substring(i + 7, uid.indexOf(']', i));
            return cls.substring(cls.lastIndexOf('$') + 1);
        }
    }

    // ==== Harness: the stub upstream, copilot-api on a free port, and an HTTP client ====

    /** A running copilot-api wired to a fresh stub; everything on loopback, port 0. */
    static final class Harness implements AutoCloseable {
        final StubUpstream stub;
        final Path home;
        final CopilotApi.Settings settings;
        final CopilotApi.CopilotTokens tokens;
        final CopilotApi.CopilotClient copilot;
        final CopilotApi.Serving.Server server;
        final HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();

        Harness(StubUpstream stub, Map<String, String> extraEnv, Consumer<CopilotApi.CommonOptions> tweak) throws IOException {
            this(stub, extraEnv, tweak, CopilotApi.Operator.Controls.none());
        }

        Harness(StubUpstream stub, CopilotApi.Operator.Controls controls) throws IOException {
            this(stub, Map.of(), o -> { }, controls);
        }

        Harness(StubUpstream stub, Map<String, String> extraEnv, Consumer<CopilotApi.CommonOptions> tweak, CopilotApi.Operator.Controls controls)
                throws IOException {
            this(stub, extraEnv, tweak, controls, CopilotApi.Serving.BrowserGuard.loopback("127.0.0.1"), CopilotApi.Timeouts.DEFAULT);
        }

        Harness(StubUpstream stub, Map<String, String> extraEnv, Consumer<CopilotApi.CommonOptions> tweak, CopilotApi.Operator.Controls controls,
                CopilotApi.Serving.BrowserGuard guard) throws IOException {
            this(stub, extraEnv, tweak, controls, guard, CopilotApi.Timeouts.DEFAULT);
        }

        Harness(StubUpstream stub, Map<String, String> extraEnv, Consumer<CopilotApi.CommonOptions> tweak, CopilotApi.Operator.Controls controls,
                CopilotApi.Timeouts timeouts) throws IOException {
            this(stub, extraEnv, tweak, controls, CopilotApi.Serving.BrowserGuard.loopback("127.0.0.1"), timeouts);
        }

        Harness(StubUpstream stub, Map<String, String> extraEnv, Consumer<CopilotApi.CommonOptions> tweak, CopilotApi.Operator.Controls controls,
                CopilotApi.Serving.BrowserGuard guard, CopilotApi.Timeouts timeouts) throws IOException {
            this(stub, extraEnv, tweak, controls, guard, timeouts, CopilotApi.Store.Options.DEFAULT);
        }

        /** A copilot-api with these store options; COPILOT_API_HOME in extraEnv reuses a data directory (a restart). */
        Harness(StubUpstream stub, Map<String, String> extraEnv, CopilotApi.Store.Options store) throws IOException {
            this(stub, extraEnv, o -> { }, CopilotApi.Operator.Controls.none(), CopilotApi.Serving.BrowserGuard.loopback("127.0.0.1"),
                CopilotApi.Timeouts.DEFAULT, store);
        }

        Harness(StubUpstream stub, Map<String, String> extraEnv, Consumer<CopilotApi.CommonOptions> tweak, CopilotApi.Operator.Controls controls,
                CopilotApi.Serving.BrowserGuard guard, CopilotApi.Timeouts timeouts, CopilotApi.Store.Options store) throws IOException {
            this(stub, extraEnv, tweak, controls, guard, timeouts, store, CopilotApi.ModelRouting.NONE);
        }

        /** A copilot-api with the user's --model-map and fallback model. */
        Harness(StubUpstream stub, CopilotApi.ModelRouting routing) throws IOException {
            this(stub, Map.of(), o -> { }, CopilotApi.Operator.Controls.none(), CopilotApi.Serving.BrowserGuard.loopback("127.0.0.1"),
                CopilotApi.Timeouts.DEFAULT, CopilotApi.Store.Options.DEFAULT, routing);
        }

        Harness(StubUpstream stub, Map<String, String> extraEnv, Consumer<CopilotApi.CommonOptions> tweak, CopilotApi.Operator.Controls controls,
                CopilotApi.Serving.BrowserGuard guard, CopilotApi.Timeouts timeouts, CopilotApi.Store.Options store, CopilotApi.ModelRouting routing)
                throws IOException {
            this.stub = stub;
            this.home = Files.createTempDirectory("copilot-api-home");
            Map<String, String> env = new HashMap<>(stub.env());
            env.put("COPILOT_API_HOME", home.toString());
            env.putAll(extraEnv);
            CopilotApi.CommonOptions options = new CopilotApi.CommonOptions();
            options.accountType = CopilotApi.AccountType.individual;
            options.githubToken = StubUpstream.VALID_GITHUB_TOKEN;
            tweak.accept(options);
            settings = CopilotApi.Settings.from(options, env);
            // start's own wiring; only the settings, timeouts, token and server options are the test's
            CopilotApi.Serving.App app = open(settings, timeouts);
            tokens = app.tokens();
            copilot = app.copilot();
            app.models().refreshQuietly();
            server = app.serve(new CopilotApi.ServerOptions("127.0.0.1", 0, routing, controls, guard, store));
        }

        /** start's composition root with the token the settings name (the stub's). */
        static CopilotApi.Serving.App open(CopilotApi.Settings settings, CopilotApi.Timeouts timeouts) throws IOException {
            try {
                return CopilotApi.Serving.App.open(settings, timeouts, auth -> auth.existingToken().orElseThrow());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new java.io.InterruptedIOException("interrupted while connecting");
            }
        }

        static Harness start() throws IOException {
            return new Harness(StubUpstream.start(), Map.of(), o -> { });
        }

        String url(String path) {
            return "http://127.0.0.1:" + server.port() + path;
        }

        HttpResponse<String> get(String path) throws Exception {
            return client.send(HttpRequest.newBuilder(URI.create(url(path))).GET().build(), HttpResponse.BodyHandlers.ofString());
        }

        HttpResponse<String> post(String path, String body) throws Exception {
            return client.send(HttpRequest.newBuilder(URI.create(url(path))).header("content-type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body)).build(), HttpResponse.BodyHandlers.ofString());
        }

        HttpResponse<String> send(String method, String path, String body, String... headers) throws Exception {
            HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(url(path)))
                .method(method, body == null ? HttpRequest.BodyPublishers.noBody() : HttpRequest.BodyPublishers.ofString(body));
            boolean typed = false;
            for (int i = 0; i < headers.length; i += 2) {
                b.header(headers[i], headers[i + 1]);
                typed |= headers[i].equalsIgnoreCase("content-type");
            }
            if (body != null && !typed) b.header("content-type", "application/json");
            return client.send(b.build(), HttpResponse.BodyHandlers.ofString());
        }

        /** A request written by hand on a socket, for headers HttpClient will not send (Host); the whole answer as text. */
        String raw(String request) throws IOException {
            try (java.net.Socket socket = new java.net.Socket("127.0.0.1", server.port())) {
                socket.setSoTimeout(10_000);
                socket.getOutputStream().write(request.getBytes(UTF_8));
                socket.getOutputStream().flush();
                return new String(socket.getInputStream().readAllBytes(), UTF_8);
            }
        }

        HttpResponse<InputStream> postStreaming(String path, String body) throws Exception {
            return client.send(HttpRequest.newBuilder(URI.create(url(path))).header("content-type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body)).build(), HttpResponse.BodyHandlers.ofInputStream());
        }

        @Override
        public void close() {
            server.stop();
            tokens.close();
            stub.close();
        }
    }

    /** One copilot-api and stub per test class; the stub's recordings are cleared before each test. */
    @TestInstance(TestInstance.Lifecycle.PER_CLASS)
    abstract static class WithHarness {
        Harness h;

        @BeforeAll
        void up() throws IOException {
            h = harness();
        }

        /** The copilot-api the class runs against; a class that needs other controls returns its own. */
        Harness harness() throws IOException {
            return Harness.start();
        }

        @AfterAll
        void down() {
            h.close();
        }

        @BeforeEach
        void clear() {
            h.stub.clear();
        }
    }

    static JsonNode json(String s) {
        try {
            return CopilotApi.JSON.readTree(s);
        } catch (IOException e) {
            throw new AssertionError("not JSON: " + s, e);
        }
    }

    /** The data payloads of an event stream, in order. */
    static List<String> dataLines(String sse) {
        List<String> out = new ArrayList<>();
        for (String line : sse.split("\n")) if (line.startsWith("data: ")) out.add(line.substring(6));
        return out;
    }

    static Path fixtures(String group) {
        for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent()) {
            Path p = dir.resolve("tests").resolve("fixtures").resolve(group);
            if (Files.isDirectory(p)) return p;
        }
        throw new IllegalStateException("tests/fixtures/" + group + " not found above " + Path.of("").toAbsolutePath());
    }

    /** The case directories of a fixture group, in name order; a group with none is an error, not a pass. */
    static List<Path> caseDirs(String group) throws IOException {
        try (Stream<Path> s = Files.list(fixtures(group))) {
            List<Path> dirs = s.filter(Files::isDirectory).sorted().toList();
            assertFalse(dirs.isEmpty(), "no cases in tests/fixtures/" + group);
            return dirs;
        }
    }

    /** Structural equality where the expected string "<any>" matches any present value. */
    static void assertJsonMatches(JsonNode expected, JsonNode actual, String where) {
        if (expected.isTextual() && expected.asText().equals("<any>")) {
            assertTrue(actual != null && !actual.isMissingNode() && !actual.isNull(), where + ": expected a value");
            return;
        }
        assertNotNull(actual, where + ": missing");
        if (expected.isObject()) {
            assertTrue(actual.isObject(), where + ": expected an object, got " + actual);
            List<String> expectedNames = new ArrayList<>();
            expected.fieldNames().forEachRemaining(expectedNames::add);
            List<String> actualNames = new ArrayList<>();
            actual.fieldNames().forEachRemaining(actualNames::add);
            assertEquals(expectedNames.stream().sorted().toList(), actualNames.stream().sorted().toList(), where + ": fields of " + actual);
            for (String name : expectedNames) assertJsonMatches(expected.get(name), actual.get(name), where + "." + name);
        } else if (expected.isArray()) {
            assertTrue(actual.isArray(), where + ": expected an array, got " + actual);
            assertEquals(expected.size(), actual.size(), where + ": length of " + actual);
            for (int i = 0; i < expected.size(); i++) assertJsonMatches(expected.get(i), actual.get(i), where + "[" + i + "]");
        } else {
            assertEquals(expected, actual, where);
        }
    }

    static <T> T eventually(Duration timeout, java.util.function.Supplier<T> probe, java.util.function.Predicate<T> ok) throws InterruptedException {
        long end = System.nanoTime() + timeout.toNanos();
        T value = probe.get();
        while (!ok.test(value) && System.nanoTime() < end) {
            Thread.sleep(50);
            value = probe.get();
        }
        return value;
    }

    // ==== GitHub login ====

    /** The device flow against the stub, with a scripted console that records the waits instead of sleeping. */
    static final class DeviceFlowTests {
        static final class ScriptedConsole implements CopilotApi.Console {
            final List<String> said = new ArrayList<>();
            final List<Duration> slept = new ArrayList<>();

            @Override
            public void say(String line) {
                said.add(line);
            }

            @Override
            public void sleep(Duration d) {
                slept.add(d);
            }
        }

        static CopilotApi.GitHubAuth auth(StubUpstream stub, Path home) {
            CopilotApi.CommonOptions o = new CopilotApi.CommonOptions();
            o.accountType = CopilotApi.AccountType.individual;
            Map<String, String> env = new HashMap<>(stub.env());
            env.put("COPILOT_API_HOME", home.toString());
            CopilotApi.Settings s = CopilotApi.Settings.from(o, env);
            return new CopilotApi.GitHubAuth(s, CopilotApi.Http.create(s));
        }

        @Test
        void pendingThenSlowDownThenToken() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                stub.deviceInterval(5);
                stub.slowDownInterval(-1);
                stub.devicePolls("authorization_pending", "slow_down", "authorization_pending", "ok");
                ScriptedConsole console = new ScriptedConsole();
                String token = auth(stub, Files.createTempDirectory("h")).deviceFlow(console);
                assertEquals(StubUpstream.VALID_GITHUB_TOKEN, token);
                assertEquals(List.of(Duration.ofSeconds(5), Duration.ofSeconds(5), Duration.ofSeconds(10), Duration.ofSeconds(10)),
                    console.slept, "slow_down without an interval adds 5 s to the wait");
                assertTrue(console.said.stream().anyMatch(l -> l.contains("WDJB-MJHT") && l.contains(stub.githubUrl() + "/login/device")),
                    "user code and verification URL shown: " + console.said);
                assertTrue(console.said.stream().anyMatch(l -> l.startsWith("Waiting for you to enter the code")),
                    "the person knows the tool is waiting: " + console.said);
                StubUpstream.Recorded start = stub.last("/login/device/code");
                assertTrue(start.body().contains("client_id=Iv1.b507a08c87ecfe98"), start.body());
                assertTrue(start.body().contains("scope=read%3Auser"), start.body());
                assertTrue(stub.last("/login/oauth/access_token").body().contains(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code"));
                assertEquals(4, stub.count("/login/oauth/access_token"));
            }
        }

        @Test
        void slowDownWithAnIntervalUsesIt() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                stub.deviceInterval(5);
                stub.slowDownInterval(12);
                stub.devicePolls("slow_down", "ok");
                ScriptedConsole console = new ScriptedConsole();
                auth(stub, Files.createTempDirectory("h")).deviceFlow(console);
                assertEquals(List.of(Duration.ofSeconds(5), Duration.ofSeconds(12)), console.slept);
            }
        }

        @Test
        void expiredAndDeniedStopWithAClearMessage() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                stub.devicePolls("expired_token");
                var e = assertThrows(CopilotApi.UserFacingException.class,
                    () -> auth(stub, Files.createTempDirectory("h")).deviceFlow(new ScriptedConsole()));
                assertTrue(e.getMessage().contains("expired"), e.getMessage());
                stub.devicePolls("authorization_pending", "access_denied");
                e = assertThrows(CopilotApi.UserFacingException.class,
                    () -> auth(stub, Files.createTempDirectory("h")).deviceFlow(new ScriptedConsole()));
                assertTrue(e.getMessage().contains("denied"), e.getMessage());
            }
        }
    }

    static final class TokenStoreTests {
        @Test
        void savedPrivatelyAndReadBack() throws Exception {
            Path home = Files.createTempDirectory("h").resolve("nested");
            CopilotApi.TokenStore store = new CopilotApi.TokenStore(home);
            assertTrue(store.load().isEmpty());
            store.save("ghu_first");
            store.save("ghu_second\n");
            assertEquals("ghu_second", store.load().orElseThrow());
            assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(home)));
            assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(store.file())));
        }

        /** The option and our own variable, then the stored login; GH_TOKEN / GITHUB_TOKEN only when nothing else exists. */
        @Test
        void sourcesInOrderExplicitThenStoredThenAmbient() throws Exception {
            Path home = Files.createTempDirectory("h");
            CopilotApi.CommonOptions o = new CopilotApi.CommonOptions();
            o.accountType = CopilotApi.AccountType.individual;
            Map<String, String> env = new HashMap<>(Map.of("COPILOT_API_HOME", home.toString(), "GITHUB_TOKEN", "ghp_github"));
            assertEquals("$GITHUB_TOKEN", auth(o, env).existingToken().orElseThrow().source(), "an ambient token when there is nothing else");
            env.put("GH_TOKEN", "gho_gh");
            assertEquals("gho_gh", auth(o, env).existingToken().orElseThrow().value(), "GH_TOKEN before GITHUB_TOKEN");
            new CopilotApi.TokenStore(home).save("ghu_file");
            CopilotApi.GitHubToken stored = auth(o, env).existingToken().orElseThrow();
            assertEquals("ghu_file", stored.value(), "the stored login wins over the ambient tokens");
            assertEquals(CopilotApi.GitHubToken.Origin.STORED, stored.origin());
            env.put("COPILOT_API_GITHUB_TOKEN", "ghu_ours");
            assertEquals("ghu_ours", auth(o, env).existingToken().orElseThrow().value());
            o.githubToken = "ghu_option";
            assertEquals("ghu_option", auth(o, env).existingToken().orElseThrow().value());
        }

        /** The file always; the directory only when it is copilot-api's own (the default data directory), not one the user named. */
        @Test
        void aTokenFileOthersCanReadIsTightenedBeforeUse() throws Exception {
            for (boolean owned : List.of(true, false)) {
                Path home = Files.createTempDirectory("h");
                CopilotApi.TokenStore store = new CopilotApi.TokenStore(home, owned);
                store.save("ghu_copied");
                Files.setPosixFilePermissions(store.file(), PosixFilePermissions.fromString("rw-r--r--"));
                Files.setPosixFilePermissions(home, PosixFilePermissions.fromString("rwxr-xr-x"));
                assertEquals("ghu_copied", store.load().orElseThrow());
                assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(store.file())));
                assertEquals(owned ? "rwx------" : "rwxr-xr-x", PosixFilePermissions.toString(Files.getPosixFilePermissions(home)),
                    owned ? "copilot-api's own directory is tightened" : "a directory the user named keeps its mode");
            }
        }

        static CopilotApi.GitHubAuth auth(CopilotApi.CommonOptions o, Map<String, String> env) {
            CopilotApi.Settings s = CopilotApi.Settings.from(o, env);
            return new CopilotApi.GitHubAuth(s, CopilotApi.Http.create(s));
        }
    }

    // ==== Copilot token lifecycle ====

    static final class TokenLifecycleTests {
        @Test
        void refreshedOnScheduleAndUsedForLaterCalls() throws Exception {
            StubUpstream stub = StubUpstream.start();
            stub.refreshIn(2);
            try (Harness h = new Harness(stub, Map.of(), o -> { })) {
                int issued = eventually(Duration.ofSeconds(8), () -> stub.tokensIssued().size(), n -> n >= 3);
                assertTrue(issued >= 3, "token refreshed at about refresh_in/2 for short lifetimes; issued " + issued);
                HttpResponse<String> r = h.post("/v1/chat/completions", "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
                assertEquals(200, r.statusCode(), r.body());
                assertEquals("Bearer " + h.tokens.current().token(), stub.last("/chat/completions").headers().get("authorization"));
                assertTrue(stub.last("/chat/completions").headers().get("authorization").contains("n=" + stub.tokensIssued().size()),
                    "the newest token is used");
            }
        }

        @Test
        void a401RefreshesTheTokenAndRetriesOnce() throws Exception {
            try (Harness h = Harness.start()) {
                int before = h.stub.tokensIssued().size();
                h.stub.expireCopilotTokens();
                HttpResponse<String> r = h.post("/v1/chat/completions", "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
                assertEquals(200, r.statusCode(), r.body());
                assertEquals(before + 1, h.stub.tokensIssued().size(), "exactly one refresh");
                assertEquals(2, h.stub.count("/chat/completions"), "one failed call, one retry");
            }
        }

        @Test
        void aFailedScheduledRefreshKeepsServing() throws Exception {
            StubUpstream stub = StubUpstream.start();
            stub.refreshIn(2);
            try (Harness h = new Harness(stub, Map.of(), o -> { })) {
                stub.tokenExchangeStatus(500);
                int attempts = eventually(Duration.ofSeconds(5), () -> stub.count("/copilot_internal/v2/token"), n -> n >= 2);
                assertTrue(attempts >= 2, "a refresh was attempted");
                HttpResponse<String> r = h.post("/v1/chat/completions", "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
                assertEquals(200, r.statusCode(), "the old token still works: " + r.body());
            }
        }

        /** Without COPILOT_API_COPILOT_URL the Copilot base is the token's endpoints.api (a wrong host answers 421). */
        @Test
        void theCopilotBaseComesFromTheToken() throws Exception {
            StubUpstream stub = StubUpstream.start();
            try (Harness h = new Harness(stub, Map.of("COPILOT_API_COPILOT_URL", ""), o -> { })) {
                assertEquals(stub.copilotUrl(), h.copilot.baseUrl());
                assertEquals(200, h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode());
                assertEquals(1, stub.count("/chat/completions"));
            }
        }

        /** A GitHub token revoked mid-session: requests fail with a 502 that says why, and the server stays up. */
        @Test
        void aRevokedGitHubTokenIsReportedNotSwallowed() throws Exception {
            try (Harness h = Harness.start()) {
                h.stub.expireCopilotTokens();
                h.stub.tokenExchangeStatus(401);
                HttpResponse<String> r = h.post("/v1/chat/completions", ChatBehaviourTests.HI);
                assertEquals(502, r.statusCode(), r.body());
                assertTrue(json(r.body()).path("error").path("message").asText().contains("copilot-api auth"), r.body());
                HttpResponse<String> again = h.post("/v1/chat/completions", ChatBehaviourTests.HI);
                assertEquals(502, again.statusCode());
                assertTrue(json(again.body()).path("error").path("message").asText().contains("next try in"), again.body());
                assertEquals(2, h.stub.count("/copilot_internal/v2/token"), "the start and one refresh: the second request waits out the back-off");
                h.stub.tokenExchangeStatus(0);
                int status = eventually(Duration.ofSeconds(5), () -> {
                    try {
                        return h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode();
                    } catch (Exception e) {
                        throw new AssertionError(e);
                    }
                }, s -> s == 200);
                assertEquals(200, status, "recovers once GitHub does, after the back-off");
            }
        }

        /** Copilot refusing every token: one refresh and retry, then requests fail fast without a new exchange each. */
        @Test
        void aPersistent401BacksOffInsteadOfExchangingOnEveryRequest() throws Exception {
            try (Harness h = Harness.start()) {
                String body = "{\"error\":{\"message\":\"unauthorized: account suspended\",\"code\":\"unauthorized\"}}";
                for (int i = 0; i < 6; i++) h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(401, body));
                int exchanges = h.stub.count("/copilot_internal/v2/token");
                for (int i = 0; i < 5; i++) assertEquals(502, h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode());
                assertEquals(exchanges + 1, h.stub.count("/copilot_internal/v2/token"), "one exchange for five refused requests");
                assertEquals(6, h.stub.count("/chat/completions"), "the first request retried once, the others went once");
                h.stub.clear();
                assertEquals(200, h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode(), "Copilot taking the token again");
            }
        }

        /** The cap the auth tests shorten: what blocks serving is bounded by 1 s here (10 s in a real run). */
        static final CopilotApi.CopilotTokens.Pacing SHORT_PACING =
            new CopilotApi.CopilotTokens.Pacing(Duration.ofSeconds(1), Duration.ofMillis(250), Duration.ofMinutes(5));

        /** Chat requests every 100 ms for this long, each refused; returns how many were sent. */
        static int refusedFor(Harness h, Duration outage) throws Exception {
            int requests = 0;
            for (long end = System.nanoTime() + outage.toNanos(); System.nanoTime() < end; requests++) {
                HttpResponse<String> r = h.post("/v1/chat/completions", ChatBehaviourTests.HI);
                assertTrue(r.statusCode() >= 500, "the outage is reported: " + r.statusCode() + " " + r.body());
                Thread.sleep(100);
            }
            return requests;
        }

        /** How long after now the first request is served, polling every 50 ms for up to five seconds. */
        static Duration untilServed(Harness h) throws Exception {
            long start = System.nanoTime();
            int status = eventually(Duration.ofSeconds(5), () -> {
                try {
                    return h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode();
                } catch (Exception e) {
                    throw new AssertionError(e);
                }
            }, s -> s == 200);
            assertEquals(200, status, "served again once GitHub and Copilot are");
            return Duration.ofNanos(System.nanoTime() - start);
        }

        /**
         * Copilot refusing every token for a while (many 401s in a row), then healthy again but refusing the tokens of the
         * outage: the first request at most the cap after the recovery is served, and the outage cost no exchange storm.
         */
        @Test
        void anAuthOutageEndsForRequestsWithinTheCapWhateverItsLength() throws Exception {
            try (Harness h = Harness.start()) {
                h.tokens.pace(SHORT_PACING);
                int before = h.stub.count("/copilot_internal/v2/token");
                h.stub.refuseCopilotTokens(true);
                int requests = refusedFor(h, Duration.ofSeconds(4));
                int exchanges = h.stub.count("/copilot_internal/v2/token") - before;
                assertTrue(exchanges >= 2, "kept trying a fresh token while refused: " + exchanges);
                assertTrue(exchanges <= 5, "at most one exchange a second (the cap), not one per request: " + exchanges + " for "
                    + requests + " requests");
                h.stub.expireCopilotTokens();
                h.stub.refuseCopilotTokens(false);
                Duration recovery = untilServed(h);
                assertTrue(recovery.toMillis() <= 1500, "served within the cap of the recovery, took " + recovery.toMillis() + " ms");
                assertEquals(200, h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode(), "and after it");
            }
        }

        /** GitHub's token endpoint down while the Copilot token has expired: back-off, but never past the cap for a request. */
        @Test
        void aTokenEndpointOutageEndsForRequestsWithinTheCap() throws Exception {
            try (Harness h = Harness.start()) {
                h.tokens.pace(SHORT_PACING);
                int before = h.stub.count("/copilot_internal/v2/token");
                h.stub.expireCopilotTokens();
                h.stub.tokenExchangeStatus(500);
                int requests = refusedFor(h, Duration.ofSeconds(4));
                int exchanges = h.stub.count("/copilot_internal/v2/token") - before;
                // 250 ms doubling up to the 1 s cap: about 3 to reach the cap, then one a second
                assertTrue(exchanges >= 3 && exchanges <= 8, "backed off between exchanges: " + exchanges + " for " + requests + " requests");
                h.stub.tokenExchangeStatus(0);
                Duration recovery = untilServed(h);
                assertTrue(recovery.toMillis() <= 1500, "served within the cap of the recovery, took " + recovery.toMillis() + " ms");
                assertEquals(200, h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode(), "and after it");
            }
        }

        /**
         * A token exchange that hangs holds only the requests that need the token: other handlers still answer. On JDK
         * 21-23 a wait inside synchronized pins the virtual thread's carrier, and two of them froze the whole server.
         */
        @Test
        void handlersStayResponsiveWhileTokenExchangesHang() throws Exception {
            try (Harness h = Harness.start()) {
                h.stub.expireCopilotTokens();
                h.stub.enqueue("/copilot_internal/v2/token", StubUpstream.Reply.json(500, "{\"message\":\"stub: slow GitHub\"}").delayMs(3000));
                int before = h.stub.count("/copilot_internal/v2/token");
                List<java.util.concurrent.CompletableFuture<HttpResponse<String>>> waiting = new ArrayList<>();
                for (int i = 0; i < 4; i++) {
                    waiting.add(h.client.sendAsync(HttpRequest.newBuilder(URI.create(h.url("/v1/chat/completions")))
                        .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(ChatBehaviourTests.HI)).build(),
                        HttpResponse.BodyHandlers.ofString()));
                }
                h.stub.await("/copilot_internal/v2/token", before + 1, Duration.ofSeconds(5));
                Thread.sleep(200);
                long start = System.nanoTime();
                assertEquals(200, h.get("/").statusCode());
                assertEquals(200, h.get("/v1/models").statusCode());
                long ms = Duration.ofNanos(System.nanoTime() - start).toMillis();
                assertTrue(ms < 1000, "other handlers answered while the exchange hung, in " + ms + " ms");
                assertFalse(waiting.stream().anyMatch(java.util.concurrent.CompletableFuture::isDone), "the exchange was still hanging");
                for (var w : waiting) {
                    HttpResponse<String> r = w.get(20, TimeUnit.SECONDS);
                    assertTrue(r.statusCode() >= 500, "the failed exchange is reported: " + r.statusCode() + " " + r.body());
                }
                assertEquals(before + 1, h.stub.count("/copilot_internal/v2/token"), "one exchange for the four waiting requests");
                untilServed(h);
            }
        }

        /**
         * GitHub's token endpoint hanging: the request that exchanges waits for its answer at most the cap, and the
         * requests queued behind it wait for the exchange at most the cap too; each failure says why.
         */
        @Test
        void requestsWaitForAHungExchangeAtMostTheCap() throws Exception {
            try (Harness h = Harness.start()) {
                h.tokens.pace(SHORT_PACING);
                h.stub.expireCopilotTokens();
                h.stub.enqueue("/copilot_internal/v2/token", StubUpstream.Reply.json(500, "{\"message\":\"stub: slow GitHub\"}").delayMs(4000));
                long start = System.nanoTime();
                List<java.util.concurrent.CompletableFuture<String>> waiting = new ArrayList<>();
                for (int i = 0; i < 3; i++) {
                    waiting.add(h.client.sendAsync(HttpRequest.newBuilder(URI.create(h.url("/v1/chat/completions")))
                        .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(ChatBehaviourTests.HI)).build(),
                        HttpResponse.BodyHandlers.ofString()).thenApply(r -> {
                            assertTrue(r.statusCode() >= 500, r.statusCode() + " " + r.body());
                            return Duration.ofNanos(System.nanoTime() - start).toMillis() + " ms: " + r.body();
                        }));
                }
                List<String> answers = new ArrayList<>();
                for (var w : waiting) answers.add(w.get(20, TimeUnit.SECONDS));
                for (String a : answers) {
                    assertTrue(Long.parseLong(a.substring(0, a.indexOf(' '))) < 2500, "gave up at the 1 s cap, not with GitHub at 4 s: " + answers);
                }
                assertTrue(answers.stream().anyMatch(a -> a.contains("GitHub did not answer the Copilot token exchange within 1s")),
                    "the exchange's timeout says what did not answer: " + answers);
                assertEquals(1, h.stub.count("/copilot_internal/v2/token") - 1, "one exchange for the three requests");
                untilServed(h);
            }
        }

        /** The guard for the above on every JDK: no synchronized in the types that wait on GitHub, Copilot or the database. */
        @Test
        void noSynchronizedWhereTokensCatalogOrStoreReadsWait() throws Exception {
            String source = Files.readString(SdkRunner.repo().resolve("copilot-api.java"));
            for (String type : List.of("class CopilotTokens ", "class ModelCatalog ")) {
                String body = nestedBody(source, type);
                assertFalse(body.matches("(?s).*\\bsynchronized\\b.*"), type + "holds a synchronized: a wait there pins a virtual thread on JDK 21-23");
            }
            String store = nestedBody(source, "class Store ");
            String read = store.substring(store.indexOf("private <T> Optional<T> read("));
            read = read.substring(0, read.indexOf("\n        }\n") + 1);
            assertFalse(read.contains("synchronized"), "the store's read waits on the database inside synchronized: " + read);
        }

        /** The text of a nested type, from its declaration to its closing brace (braces counted; the file's strings hold none that matter). */
        static String nestedBody(String source, String declaration) {
            int from = source.indexOf(declaration);
            assertTrue(from > 0, declaration + "not found");
            int depth = 0;
            for (int i = source.indexOf('{', from); i < source.length(); i++) {
                char c = source.charAt(i);
                if (c == '{') depth++;
                if (c == '}' && --depth == 0) return source.substring(from, i + 1);
            }
            throw new AssertionError("unbalanced braces after " + declaration);
        }

        @Test
        void exchangeFailuresExplainThemselves() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                for (var c : List.of(Map.entry(403, "no Copilot access"), Map.entry(404, "cannot be exchanged"), Map.entry(401, "invalid"))) {
                    stub.tokenExchangeStatus(c.getKey());
                    CopilotApi.CommonOptions o = new CopilotApi.CommonOptions();
                    o.accountType = CopilotApi.AccountType.individual;
                    CopilotApi.Settings s = CopilotApi.Settings.from(o, stub.env());
                    var tokens = new CopilotApi.CopilotTokens(s, CopilotApi.Http.create(s), StubUpstream.VALID_GITHUB_TOKEN);
                    var e = assertThrows(CopilotApi.UserFacingException.class, tokens::exchange);
                    assertTrue(e.getMessage().contains(c.getValue()) && e.getMessage().contains(String.valueOf(c.getKey())), e.getMessage());
                }
            }
        }
    }

    // ==== The OpenAI surface ====

    static final class ModelsTests extends WithHarness {

        /** Eight first requests at once make one GET /models, not eight in a row. */
        @Test
        void concurrentFirstRequestsFetchTheCatalogOnce() throws Exception {
            ObjectNode catalog = CopilotApi.Json.object();
            catalog.set("data", h.stub.models());
            h.stub.enqueue("/models", StubUpstream.Reply.json(200, catalog.toString()).delayMs(300));
            CopilotApi.ModelCatalog fresh = new CopilotApi.ModelCatalog(h.copilot);
            List<java.util.concurrent.CompletableFuture<Integer>> all = new ArrayList<>();
            for (int i = 0; i < 8; i++) all.add(java.util.concurrent.CompletableFuture.supplyAsync(() -> fresh.list().size()));
            for (var f : all) assertTrue(f.get(10, TimeUnit.SECONDS) > 0);
            assertEquals(1, h.stub.count("/models"), "one fetch served all eight");
        }

        /** By id, the catalog gives what a walk of its list gives: the first model of an id, none for an unknown id; known() never fetches. */
        @Test
        void aModelIsLookedUpByIdAsAWalkOfTheListFindsItAndKnownNeverFetches() throws Exception {
            ObjectNode catalog = CopilotApi.Json.object();
            ArrayNode data = catalog.putArray("data");
            h.stub.models().forEach(data::add);
            data.addObject().put("id", "gpt-4.1").put("name", "a second entry with the same id");
            h.stub.enqueue("/models", StubUpstream.Reply.json(200, catalog.toString()));
            int fetches = h.stub.count("/models");
            CopilotApi.ModelCatalog fresh = new CopilotApi.ModelCatalog(h.copilot);
            assertTrue(fresh.known("gpt-4.1").isEmpty(), "nothing is known before the first fetch");
            assertEquals(fetches, h.stub.count("/models"), "known() does not fetch");
            List<JsonNode> list = fresh.list();
            for (JsonNode m : list) {
                String id = m.path("id").asText();
                JsonNode first = list.stream().filter(x -> x.path("id").asText().equals(id)).findFirst().orElseThrow();
                assertSame(first, fresh.find(id).orElseThrow(), id);
                assertSame(first, fresh.known(id).orElseThrow(), id);
            }
            assertNotEquals("a second entry with the same id", fresh.find("gpt-4.1").orElseThrow().path("name").asText());
            assertTrue(fresh.find("no-such-model").isEmpty());
            assertTrue(fresh.known("no-such-model").isEmpty());
            assertEquals(fetches + 1, h.stub.count("/models"), "one fetch in all");
        }

        /**
         * A catalog fetch that hangs: five requests that need the catalog share the one fetch and its failure, so all fail
         * at about one timeout (not one after another), and the next request after Copilot recovers is served.
         */
        @Test
        void aHungCatalogFetchFailsItsWaitersTogether() throws Exception {
            StubUpstream stub = StubUpstream.start();
            ObjectNode catalog = CopilotApi.Json.object();
            catalog.set("data", stub.models());
            String hung = catalog.toString();
            // the fetch at start hangs too, so the server has no catalog yet
            stub.enqueue("/models", StubUpstream.Reply.json(200, hung).delayMs(4000));
            CopilotApi.Timeouts oneSecond = new CopilotApi.Timeouts(Duration.ofSeconds(1), Duration.ofSeconds(120), Duration.ofMinutes(10),
                Duration.ofSeconds(3), Duration.ofSeconds(15));
            try (Harness own = new Harness(stub, Map.of(), o -> { }, CopilotApi.Operator.Controls.none(), oneSecond)) {
                for (int i = 0; i < 5; i++) stub.enqueue("/models", StubUpstream.Reply.json(200, hung).delayMs(4000));
                stub.clear();
                long start = System.nanoTime();
                List<java.util.concurrent.CompletableFuture<Long>> all = new ArrayList<>();
                for (int i = 0; i < 5; i++) {
                    all.add(own.client.sendAsync(HttpRequest.newBuilder(URI.create(own.url("/v1/models"))).GET().build(),
                        HttpResponse.BodyHandlers.ofString()).thenApply(r -> {
                            assertEquals(504, r.statusCode(), r.body());
                            return Duration.ofNanos(System.nanoTime() - start).toMillis();
                        }));
                }
                for (var f : all) {
                    long ms = f.get(20, TimeUnit.SECONDS);
                    assertTrue(ms < 2500, "failed with the one fetch's timeout (1 s), not after the fetches before it: " + ms + " ms");
                }
                assertEquals(1, stub.count("/models"), "one catalog fetch for the five requests");
                stub.reset();
                HttpResponse<String> r = own.get("/v1/models");
                assertEquals(200, r.statusCode(), "served once Copilot answers again: " + r.body());
            }
        }

        @Test
        void listHasBothConventionsWithAndWithoutPrefix() throws Exception {
            for (String path : List.of("/v1/models", "/models")) {
                HttpResponse<String> r = h.get(path);
                assertEquals(200, r.statusCode());
                JsonNode body = json(r.body());
                assertEquals("list", body.path("object").asText());
                assertFalse(body.path("has_more").asBoolean(true));
                JsonNode claude = null;
                for (JsonNode m : body.path("data")) if (m.path("id").asText().equals("claude-sonnet-4.5")) claude = m;
                assertNotNull(claude, r.body());
                assertEquals("model", claude.path("object").asText());
                assertEquals("model", claude.path("type").asText());
                assertTrue(claude.path("created").isNumber());
                assertTrue(claude.path("created_at").isTextual());
                assertFalse(claude.path("owned_by").asText().isEmpty());
                assertFalse(claude.path("display_name").asText().isEmpty());
                assertEquals(body.path("data").get(0).path("id").asText(), body.path("first_id").asText());
            }
        }

        @Test
        void oneModelAndAnUnknownOne() throws Exception {
            assertEquals("gpt-4.1", json(h.get("/v1/models/gpt-4.1").body()).path("id").asText());
            HttpResponse<String> r = h.get("/v1/models/nope");
            assertEquals(404, r.statusCode());
            assertTrue(json(r.body()).path("error").path("message").asText().contains("nope"));
        }

        @Test
        void rootSaysItRuns() throws Exception {
            HttpResponse<String> r = h.get("/");
            assertEquals(200, r.statusCode());
            assertTrue(r.body().contains("running"));
        }

        @Test
        void usageAndTokenRoutes() throws Exception {
            JsonNode usage = json(h.get("/usage").body());
            assertEquals(300, usage.path("quota_snapshots").path("premium_interactions").path("entitlement").asInt());
            JsonNode token = json(h.get("/token").body());
            assertEquals(h.tokens.current().token(), token.path("token").asText());
        }
    }

    /** Each directory under tests/fixtures/chat: a client request, what Copilot answers, what the client must get. */
    static final class ChatFixtureTests {
        @TestFactory
        Stream<DynamicTest> fixtures() throws IOException {
            Harness h = Harness.start();
            return caseDirs("chat").stream().map(dir -> DynamicTest.dynamicTest(dir.getFileName().toString(), () -> run(h, dir))).onClose(h::close);
        }

        static void run(Harness h, Path dir) throws Exception {
            String request = Files.readString(dir.resolve("request.json"));
            Path upstream = Files.exists(dir.resolve("upstream.sse")) ? dir.resolve("upstream.sse") : dir.resolve("upstream.json");
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.fromFile(upstream));
            HttpResponse<String> r = h.post("/v1/chat/completions", request);
            assertEquals(200, r.statusCode(), r.body());
            if (Files.exists(dir.resolve("expected.sse"))) {
                assertTrue(r.headers().firstValue("content-type").orElse("").startsWith("text/event-stream"));
                List<String> expected = dataLines(Files.readString(dir.resolve("expected.sse")));
                List<String> actual = dataLines(r.body());
                assertEquals(expected.size(), actual.size(), "number of events:\n" + r.body());
                for (int i = 0; i < expected.size(); i++) {
                    if (expected.get(i).equals("[DONE]")) assertEquals("[DONE]", actual.get(i), "event " + i);
                    else assertJsonMatches(json(expected.get(i)), json(actual.get(i)), "event " + i);
                }
            } else {
                assertJsonMatches(json(Files.readString(dir.resolve("expected.json"))), json(r.body()), "response");
            }
        }
    }

    /**
     * One upstream chat stream, three consumers. Each {@code tests/fixtures/stream/<case>/upstream.sse} (the stub's
     * format: {@code data:} lines, {@code #cut N} to break the connection after N events) is served for a chat model
     * through the whole server, and read back as an OpenAI chat stream ({@code expected-chat.sse}), an Anthropic
     * stream ({@code expected-anthropic.events}) and a Responses stream ({@code expected-responses.events}). In the
     * expected files {@code "<any>"} matches any value. {@code COPILOT_API_BLESS=1} writes the actual outputs as the new
     * expected files (ids and timestamps as {@code "<any>"}); read the diff before committing it.
     */
    static final class StreamFixtureTests {
        static final boolean BLESS = "1".equals(System.getenv("COPILOT_API_BLESS"));
        static final Set<String> VOLATILE = Set.of("id", "created", "created_at", "call_id", "item_id", "completed_at");
        static final Map<String, String[]> CONSUMERS = Map.of(
            "expected-chat.sse", new String[] {"/v1/chat/completions",
                "{\"model\":\"gpt-4.1\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"},
            "expected-anthropic.events", new String[] {"/v1/messages",
                "{\"model\":\"gpt-4.1\",\"stream\":true,\"max_tokens\":200,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"},
            "expected-responses.events", new String[] {"/v1/responses",
                "{\"model\":\"gpt-4.1\",\"stream\":true,\"input\":\"hi\"}"});

        @TestFactory
        Stream<DynamicTest> everyConsumerOfEveryStream() throws IOException {
            Harness h = Harness.start();
            List<DynamicTest> tests = new ArrayList<>();
            for (Path dir : caseDirs("stream")) {
                for (String expected : new java.util.TreeSet<>(CONSUMERS.keySet())) {
                    tests.add(DynamicTest.dynamicTest(dir.getFileName() + " " + expected, () -> run(h, dir, expected)));
                }
            }
            return tests.stream().onClose(h::close);
        }

        static void run(Harness h, Path dir, String expectedFile) throws Exception {
            String[] consumer = CONSUMERS.get(expectedFile);
            h.stub.clear();
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.fromFile(dir.resolve("upstream.sse")));
            HttpResponse<String> r = h.post(consumer[0], consumer[1]);
            assertEquals(200, r.statusCode(), r.body());
            assertEquals(1, h.stub.count("/chat/completions"), "one upstream call");
            List<JsonNode> actual = events(r.body());
            Path expected = dir.resolve(expectedFile);
            if (BLESS) {
                StringBuilder b = new StringBuilder();
                for (JsonNode e : actual) b.append(e.path("event").isTextual() ? "event: " + e.path("event").asText() + "\n" : "")
                    .append("data: ").append(e.path("data").isTextual() ? e.path("data").asText() : CopilotApi.JSON.writeValueAsString(blessed(e.path("data"))))
                    .append("\n\n");
                Files.writeString(expected, b.toString());
            }
            assertTrue(Files.exists(expected), expected + " is missing; run with COPILOT_API_BLESS=1 to write it");
            List<JsonNode> want = events(Files.readString(expected));
            assertEquals(want.size(), actual.size(), "number of events:\n" + r.body());
            for (int i = 0; i < want.size(); i++) assertJsonMatches(want.get(i), actual.get(i), expectedFile + " event " + i);
        }

        /** Each event as {event, data}: data parsed as JSON, or the text itself ([DONE]). */
        static List<JsonNode> events(String sse) {
            List<JsonNode> out = new ArrayList<>();
            for (String block : sse.replace("\r\n", "\n").split("\n\n")) {
                ObjectNode e = CopilotApi.Json.object();
                for (String line : block.split("\n")) {
                    if (line.startsWith("event: ")) e.put("event", line.substring(7));
                    if (line.startsWith("data: ")) {
                        String data = line.substring(6);
                        e.set("data", data.equals("[DONE]") ? e.textNode(data) : json(data));
                    }
                }
                if (e.has("data")) out.add(e);
            }
            return out;
        }

        static JsonNode blessed(JsonNode n) {
            if (n.isObject()) {
                ObjectNode o = ((ObjectNode) n).deepCopy();
                for (var it = o.properties().iterator(); it.hasNext(); ) {
                    var f = it.next();
                    f.setValue(VOLATILE.contains(f.getKey()) && !f.getValue().isNull() && !f.getValue().isContainerNode()
                        ? o.textNode("<any>") : blessed(f.getValue()));
                }
                return o;
            }
            if (n.isArray()) {
                com.fasterxml.jackson.databind.node.ArrayNode a = CopilotApi.Json.array();
                n.forEach(x -> a.add(blessed(x)));
                return a;
            }
            return n;
        }
    }

    /** The upstream event-stream reader on its own edges: line ends, split reads, odd fields, the end of the stream. */
    static final class SseReaderTests {
        /** Gives the bytes in the pieces given, one piece per read; available() is what is left of the current piece. */
        static final class Pieces extends InputStream {
            private final java.util.ArrayDeque<byte[]> pieces = new java.util.ArrayDeque<>();
            private byte[] current = new byte[0];
            private int at;

            Pieces(byte[]... parts) {
                pieces.addAll(List.of(parts));
                if (!pieces.isEmpty()) current = pieces.poll();
            }

            static Pieces of(String... parts) {
                return new Pieces(Stream.of(parts).map(p -> p.getBytes(UTF_8)).toArray(byte[][]::new));
            }

            @Override
            public int read() {
                byte[] one = new byte[1];
                return read(one, 0, 1) < 0 ? -1 : one[0] & 0xff;
            }

            @Override
            public int read(byte[] b, int off, int len) {
                while (at == current.length) {
                    if (pieces.isEmpty()) return -1;
                    current = pieces.poll();
                    at = 0;
                }
                int n = Math.min(len, current.length - at);
                System.arraycopy(current, at, b, off, n);
                at += n;
                return n;
            }

            @Override
            public int available() {
                return current.length - at;
            }
        }

        static List<CopilotApi.SseEvent> all(InputStream in) throws IOException {
            CopilotApi.SseReader reader = new CopilotApi.SseReader(in);
            List<CopilotApi.SseEvent> out = new ArrayList<>();
            for (CopilotApi.SseEvent e = reader.next(); e != null; e = reader.next()) out.add(e);
            return out;
        }

        @Test
        void crlfAndBareCrEndLinesAsLfDoes() throws IOException {
            assertEquals(List.of(new CopilotApi.SseEvent("a", "1"), new CopilotApi.SseEvent(null, "2"), new CopilotApi.SseEvent(null, "3")),
                all(Pieces.of("event: a\r\ndata: 1\r\n\r\ndata: 2\r\rdata: 3\n\n")));
        }

        @Test
        void aCrlfSplitBetweenTwoReadsIsOneLineEnd() throws IOException {
            assertEquals(List.of(new CopilotApi.SseEvent(null, "x"), new CopilotApi.SseEvent(null, "y")),
                all(Pieces.of("data: x\r", "\n\r", "\ndata: y\r\n\r\n")));
        }

        @Test
        void aUtf8CharacterSplitAcrossReadsArrivesWhole() throws IOException {
            byte[] bytes = "data: h\u00e9 \u20ac \ud83d\ude00\n\n".getBytes(UTF_8);
            byte[][] singles = new byte[bytes.length][];
            for (int i = 0; i < bytes.length; i++) singles[i] = new byte[] {bytes[i]};
            assertEquals(List.of(new CopilotApi.SseEvent(null, "h\u00e9 \u20ac \ud83d\ude00")), all(new Pieces(singles)));
        }

        @Test
        void aLastEventWithoutItsBlankLineIsStillGiven() throws IOException {
            assertEquals(List.of(new CopilotApi.SseEvent(null, "1"), new CopilotApi.SseEvent("end", "2")),
                all(Pieces.of("data: 1\n\nevent: end\ndata: 2")));
            assertEquals(List.of(new CopilotApi.SseEvent(null, "3")), all(Pieces.of("data: 3\n")));
        }

        @Test
        void commentsAreSkippedAndNeverDispatchAnEvent() throws IOException {
            assertEquals(List.of(new CopilotApi.SseEvent(null, "1")), all(Pieces.of(": keep-alive\n\n:\n\ndata: 1\n: inside\n\n: tail\n\n")));
        }

        @Test
        void severalDataLinesJoinWithNewlinesAndOnlyOneLeadingSpaceIsStripped() throws IOException {
            assertEquals(List.of(new CopilotApi.SseEvent(null, "a\n  b\n\nc")), all(Pieces.of("data: a\ndata:   b\ndata\ndata:c\n\n")));
        }

        @Test
        void eventIdAndRetryFieldsAreReadAndOnlyTheEventNameIsKept() throws IOException {
            assertEquals(List.of(new CopilotApi.SseEvent("message_start", "{}"), new CopilotApi.SseEvent(null, "2")),
                all(Pieces.of("id: 7\nretry: 3000\nevent: message_start\ndata: {}\n\nid: 8\ndata: 2\n\n")));
        }

        @Test
        void aByteOrderMarkAtTheStartIsNotPartOfTheFirstField() throws IOException {
            assertEquals(List.of(new CopilotApi.SseEvent("a", "1")), all(Pieces.of("\ufeffevent: a\ndata: 1\n\n")));
        }

        @Test
        void readyOnlyWhenAWholeEventIsHere() throws IOException {
            CopilotApi.SseReader reader = new CopilotApi.SseReader(Pieces.of("data: 1\n\ndata: 2", "\n", "\n: x\n\n", "data: 3\n\n"));
            assertTrue(reader.ready(), "the first event is whole");
            assertEquals("1", reader.next().data());
            assertFalse(reader.ready(), "half of the second event is here");
            assertEquals("2", reader.next().data());
            assertFalse(reader.ready(), "only a comment is here");
            assertEquals("3", reader.next().data());
            assertNull(reader.next());
            assertTrue(reader.ready(), "the end is here: next() does not wait");
        }
    }

    static final class ChatBehaviourTests extends WithHarness {

        static final String HI = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

        @Test
        void editorHeadersAndUserInitiatorOnAUserTurn() throws Exception {
            assertEquals(200, h.post("/v1/chat/completions", HI).statusCode());
            Map<String, String> headers = h.stub.last("/chat/completions").headers();
            assertEquals("vscode-chat", headers.get("copilot-integration-id"));
            assertTrue(headers.get("editor-version").startsWith("vscode/"));
            assertTrue(headers.get("editor-plugin-version").startsWith("copilot-chat/"));
            assertTrue(headers.get("user-agent").startsWith("GitHubCopilotChat/"));
            assertNotNull(headers.get("openai-intent"));
            assertNotNull(headers.get("x-github-api-version"));
            assertEquals(36, headers.get("x-request-id").length());
            assertEquals("user", headers.get("x-initiator"));
            assertNull(headers.get("copilot-vision-request"));
        }

        @Test
        void newerGptModelsGetMaxCompletionTokens() throws Exception {
            HttpResponse<String> r = h.post("/v1/chat/completions", HI.replace("gpt-4.1", "gpt-5-mini").replace("{\"model\"", "{\"max_tokens\":77,\"model\""));
            assertEquals(200, r.statusCode(), r.body());
            JsonNode sent = h.stub.last("/chat/completions").json();
            assertEquals(77, sent.path("max_completion_tokens").asInt());
            assertFalse(sent.has("max_tokens"));
            assertEquals(200, h.post("/v1/chat/completions", HI.replace("{\"model\"", "{\"max_tokens\":77,\"model\"")).statusCode());
            assertEquals(77, h.stub.last("/chat/completions").json().path("max_tokens").asInt(), "older models keep max_tokens");
        }

        @Test
        void agentInitiatorAfterAToolResult() throws Exception {
            String body = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"ls\"},"
                + "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"ls\",\"arguments\":\"{}\"}}]},"
                + "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"a.txt\"}]}";
            assertEquals(200, h.post("/v1/chat/completions", body).statusCode());
            assertEquals("agent", h.stub.last("/chat/completions").headers().get("x-initiator"));
        }

        @Test
        void visionHeaderWhenAnImageIsPresent() throws Exception {
            String body = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"what is this\"},"
                + "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,iVBORw0KGgo=\"}}]}]}";
            HttpResponse<String> r = h.post("/v1/chat/completions", body);
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("true", h.stub.last("/chat/completions").headers().get("copilot-vision-request"));
        }

        @Test
        void streamAsksUpstreamForUsageAndEndsWithDone() throws Exception {
            HttpResponse<String> r = h.post("/chat/completions", HI.replace("{\"model\"", "{\"stream\":true,\"model\""));
            assertEquals(200, r.statusCode());
            JsonNode sent = h.stub.last("/chat/completions").json();
            assertTrue(sent.path("stream_options").path("include_usage").asBoolean(), "usage requested upstream: " + sent);
            List<String> lines = dataLines(r.body());
            assertEquals("[DONE]", lines.get(lines.size() - 1));
            assertEquals("assistant", json(lines.get(0)).path("choices").get(0).path("delta").path("role").asText());
            for (String l : lines.subList(0, lines.size() - 1)) assertFalse(json(l).has("usage"), "usage only when the client asked: " + l);
        }

        /** The client must see the first chunk while the upstream is still sending. */
        @Test
        void streamIsRelayedEventByEvent() throws Exception {
            List<String> events = List.of(
                "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one\"}}],\"id\":\"c\",\"created\":1,\"model\":\"gpt-4.1\"}",
                "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\" two\"}}],\"id\":\"c\",\"created\":1,\"model\":\"gpt-4.1\"}",
                "{\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"delta\":{}}],\"id\":\"c\",\"created\":1,\"model\":\"gpt-4.1\"}",
                "[DONE]");
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.sse(events).delayMs(1500));
            long start = System.nanoTime();
            HttpResponse<InputStream> r = h.postStreaming("/v1/chat/completions", HI.replace("{\"model\"", "{\"stream\":true,\"model\""));
            BufferedReader reader = new BufferedReader(new InputStreamReader(r.body(), UTF_8));
            String first = null;
            for (String line = reader.readLine(); line != null; line = reader.readLine()) {
                if (line.startsWith("data: ")) {
                    first = line;
                    break;
                }
            }
            long firstMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
            assertNotNull(first);
            assertTrue(first.contains("\"one\""), first);
            StringBuilder rest = new StringBuilder();
            for (String line = reader.readLine(); line != null; line = reader.readLine()) rest.append(line).append('\n');
            long totalMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
            assertTrue(totalMs >= 4000, "the upstream took its time: " + totalMs);
            assertTrue(firstMs < totalMs - 2500, "first chunk after " + firstMs + " ms of " + totalMs + " ms: it was buffered");
            assertTrue(rest.toString().contains("[DONE]"));
        }

        @Test
        void clientDisconnectCancelsTheUpstreamRequest() throws Exception {
            List<String> events = new ArrayList<>();
            for (int i = 0; i < 200; i++) {
                events.add("{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x" + i + "\"}}],\"id\":\"c\",\"created\":1,\"model\":\"gpt-4.1\"}");
            }
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.sse(events).delayMs(100));
            HttpResponse<InputStream> r = h.postStreaming("/v1/chat/completions", HI.replace("{\"model\"", "{\"stream\":true,\"model\""));
            InputStream body = r.body();
            assertTrue(body.read(new byte[64]) > 0);
            body.close();
            StubUpstream.Recorded upstream = h.stub.last("/chat/completions");
            assertTrue(h.stub.awaitClientGone(upstream, Duration.ofSeconds(10)), "the upstream stream was not cancelled");
        }

        @Test
        void aModelServedOnlyOnResponsesAnswersThroughResponses() throws Exception {
            String body = "{\"model\":\"gpt-5.1-codex\",\"max_tokens\":500,\"reasoning_effort\":\"low\",\"messages\":["
                + "{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"ls\"}],"
                + "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"Bash\",\"parameters\":{\"type\":\"object\"}}}]}";
            HttpResponse<String> r = h.post("/v1/chat/completions", body);
            assertEquals(200, r.statusCode(), r.body());
            assertEquals(0, h.stub.count("/chat/completions"));
            JsonNode sent = h.stub.last("/responses").json();
            assertFalse(sent.path("store").asBoolean(true), "store: false");
            assertEquals("be brief", sent.path("instructions").asText());
            assertEquals(500, sent.path("max_output_tokens").asInt());
            assertEquals("low", sent.path("reasoning").path("effort").asText());
            assertEquals("reasoning.encrypted_content", sent.path("include").get(0).asText());
            assertEquals("Bash", sent.path("tools").get(0).path("name").asText(), "tools are flat on /responses");
            JsonNode choice = json(r.body()).path("choices").get(0);
            assertEquals("tool_calls", choice.path("finish_reason").asText());
            assertEquals("Bash", choice.path("message").path("tool_calls").get(0).path("function").path("name").asText());
            HttpResponse<String> streamed = h.post("/v1/chat/completions", body.replace("{\"model\"", "{\"stream\":true,\"model\""));
            List<String> lines = dataLines(streamed.body());
            assertEquals("[DONE]", lines.get(lines.size() - 1), streamed.body());
            assertEquals("assistant", json(lines.get(0)).path("choices").get(0).path("delta").path("role").asText());
            assertTrue(streamed.body().contains("\"finish_reason\":\"tool_calls\""), streamed.body());
        }

        /** A turn of two tool calls sent without ids, their results without tool_call_id, then a call without id whose result has one. */
        static final String CALLS_WITHOUT_IDS = "{\"model\":\"gpt-5.1-codex\",\"messages\":["
            + "{\"role\":\"user\",\"content\":\"look around\"},"
            + "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":["
            + "{\"type\":\"function\",\"function\":{\"name\":\"Bash\",\"arguments\":\"{\\\"cmd\\\":\\\"ls\\\"}\"}},"
            + "{\"type\":\"function\",\"function\":{\"name\":\"Bash\",\"arguments\":\"{\\\"cmd\\\":\\\"pwd\\\"}\"}}]},"
            + "{\"role\":\"tool\",\"content\":\"a.txt\"},"
            + "{\"role\":\"tool\",\"content\":\"/home\"},"
            + "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":["
            + "{\"type\":\"function\",\"function\":{\"name\":\"Read\",\"arguments\":\"{\\\"path\\\":\\\"a.txt\\\"}\"}}]},"
            + "{\"role\":\"tool\",\"tool_call_id\":\"call_given\",\"content\":\"hello\"}],"
            + "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"Bash\",\"parameters\":{\"type\":\"object\"}}},"
            + "{\"type\":\"function\",\"function\":{\"name\":\"Read\",\"parameters\":{\"type\":\"object\"}}}]}";

        /**
         * Tool calls without ids, to a model Copilot serves only on /responses: each call and the result after it in the
         * same order share one id (the result's when it has one, else one derived from the call), never an empty call_id;
         * sent again, the conversation carries the same ids, so Copilot's prompt cache keeps hitting.
         */
        @Test
        void toolCallsWithoutIdsArePairedWithTheirResultsUnderStableIds() throws Exception {
            List<JsonNode> sent = new ArrayList<>();
            for (int i = 0; i < 2; i++) {
                HttpResponse<String> r = h.post("/v1/chat/completions", CALLS_WITHOUT_IDS);
                assertEquals(200, r.statusCode(), r.body());
                sent.add(h.stub.last("/responses").json().path("input"));
            }
            List<String> calls = new ArrayList<>();
            List<String> outputs = new ArrayList<>();
            for (JsonNode item : sent.get(0)) {
                if (item.path("type").asText().equals("function_call")) calls.add(item.path("call_id").asText());
                if (item.path("type").asText().equals("function_call_output")) outputs.add(item.path("call_id").asText());
            }
            assertEquals(3, calls.size(), sent.get(0).toString());
            assertEquals(calls, outputs, "each result answers the call before it, in order: " + sent.get(0));
            assertTrue(calls.get(0).startsWith("call_") && calls.get(1).startsWith("call_"), "derived ids: " + calls);
            assertFalse(calls.get(0).equals(calls.get(1)), "two calls, two ids: " + calls);
            assertEquals("call_given", calls.get(2), "a call without id takes the id its result names");
            assertEquals(sent.get(0), sent.get(1), "the same conversation sent again carries the same ids");
        }

        /**
         * What cannot be paired is refused before any call to Copilot, naming the message and field as OpenAI does: two
         * calls without ids and one result, or a tool message without tool_call_id that follows no tool call.
         */
        @Test
        void toolCallsAndResultsThatCannotBePairedAreRefused() throws Exception {
            String oneResultShort = CALLS_WITHOUT_IDS.replace("{\"role\":\"tool\",\"content\":\"/home\"},", "");
            String strayResult = CALLS_WITHOUT_IDS.replace("{\"role\":\"user\",\"content\":\"look around\"},",
                "{\"role\":\"user\",\"content\":\"look around\"},{\"role\":\"tool\",\"content\":\"stray\"},");
            for (var c : List.of(Map.entry(oneResultShort, "messages[1].tool_calls[0].id"), Map.entry(strayResult, "messages[1].tool_call_id"))) {
                for (String body : List.of(c.getKey(), c.getKey().replace("{\"model\"", "{\"stream\":true,\"model\""))) {
                    HttpResponse<String> r = h.post("/v1/chat/completions", body);
                    assertEquals(400, r.statusCode(), r.body());
                    JsonNode error = json(r.body()).path("error");
                    assertEquals("invalid_request_error", error.path("type").asText(), r.body());
                    assertEquals(c.getValue(), error.path("param").asText(), r.body());
                    assertTrue(error.path("message").asText().contains(c.getValue()), r.body());
                }
            }
            assertEquals(0, h.stub.count("/responses"), "refused before Copilot");
        }

        /** On a model Copilot serves on /chat/completions the conversation goes as sent: Copilot judges its own wire. */
        @Test
        void toolCallsWithoutIdsGoAsSentToAChatModel() throws Exception {
            HttpResponse<String> r = h.post("/v1/chat/completions", CALLS_WITHOUT_IDS.replace("gpt-5.1-codex", "gpt-4.1"));
            assertEquals(200, r.statusCode(), r.body());
            JsonNode messages = h.stub.last("/chat/completions").json().path("messages");
            assertFalse(messages.get(1).path("tool_calls").get(0).has("id"), messages.toString());
            assertFalse(messages.get(2).has("tool_call_id"), messages.toString());
        }
    }

    static final class EmbeddingsTests extends WithHarness {

        @Test
        void base64IsLittleEndianFloat32OfTheUpstreamFloats() throws Exception {
            String req = "{\"model\":\"text-embedding-3-small\",\"input\":[\"hello\",\"world\"]";
            JsonNode floats = json(h.post("/v1/embeddings", req + "}").body());
            JsonNode b64 = json(h.post("/v1/embeddings", req + ",\"encoding_format\":\"base64\"}").body());
            assertFalse(h.stub.last("/embeddings").json().has("encoding_format"), "copilot-api encodes, Copilot is asked for floats");
            assertEquals(2, b64.path("data").size());
            for (int i = 0; i < 2; i++) {
                JsonNode expected = floats.path("data").get(i).path("embedding");
                byte[] raw = Base64.getDecoder().decode(b64.path("data").get(i).path("embedding").asText());
                ByteBuffer buf = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN);
                assertEquals(expected.size() * 4, raw.length);
                for (JsonNode v : expected) assertEquals((float) v.asDouble(), buf.getFloat(), 0f);
            }
        }

        @Test
        void badInputIsRefusedLocally() throws Exception {
            HttpResponse<String> r = h.post("/v1/embeddings", "{\"model\":\"text-embedding-3-small\"}");
            assertEquals(400, r.statusCode());
            assertEquals("input", json(r.body()).path("error").path("param").asText());
            assertEquals(0, h.stub.count("/embeddings"));
        }
    }

    /** --model-map on every model route, streamed and not: Copilot hears the mapped name, the client keeps its own. */
    static final class ModelMapRouteTests {
        static final CopilotApi.ModelRouting MAP = new CopilotApi.ModelRouting(Map.of("house-chat", "gpt-4.1",
            "house-embed", "text-embedding-3-small", "house-claude", "claude-sonnet-4.5", "house-codex", "gpt-5.1-codex"), java.util.Optional.empty());

        @Test
        void chatCompletionsSendTheMappedModelStreamedAndNot() throws Exception {
            try (Harness h = new Harness(StubUpstream.start(), MAP)) {
                for (boolean stream : List.of(false, true)) {
                    HttpResponse<String> r = h.post("/v1/chat/completions",
                        "{\"model\":\"house-chat\",\"stream\":" + stream + ",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
                    assertEquals(200, r.statusCode(), r.body());
                    assertEquals("gpt-4.1", h.stub.last("/chat/completions").json().path("model").asText(), "stream " + stream);
                }
            }
        }

        /** With an empty catalog the name goes as asked, but the user's map still applies. */
        @Test
        void chatCompletionsMapTheModelWhenTheCatalogIsEmpty() throws Exception {
            StubUpstream stub = StubUpstream.start();
            for (int i = 0; i < 20; i++) stub.enqueue("/models", StubUpstream.Reply.json(200, "{\"object\":\"list\",\"data\":[]}"));
            try (Harness h = new Harness(stub, MAP)) {
                HttpResponse<String> r = h.post("/v1/chat/completions", "{\"model\":\"house-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
                assertEquals(200, r.statusCode(), r.body());
                assertEquals("gpt-4.1", h.stub.last("/chat/completions").json().path("model").asText());
                assertEquals(200, h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode(), "an unmapped name goes as asked");
                assertEquals("gpt-4.1", h.stub.last("/chat/completions").json().path("model").asText());
            }
        }

        @Test
        void embeddingsSendTheMappedModel() throws Exception {
            try (Harness h = new Harness(StubUpstream.start(), MAP)) {
                HttpResponse<String> r = h.post("/v1/embeddings", "{\"model\":\"house-embed\",\"input\":\"hello\"}");
                assertEquals(200, r.statusCode(), r.body());
                assertEquals("text-embedding-3-small", h.stub.last("/embeddings").json().path("model").asText());
                assertEquals(200, h.post("/v1/embeddings", "{\"model\":\"text-embedding-3-small\",\"input\":\"hello\"}").statusCode(),
                    "an unmapped name goes as asked");
            }
        }

        @Test
        void messagesAndResponsesSendTheMappedModelStreamedAndNot() throws Exception {
            try (Harness h = new Harness(StubUpstream.start(), MAP)) {
                for (boolean stream : List.of(false, true)) {
                    HttpResponse<String> m = h.post("/v1/messages", "{\"model\":\"house-claude\",\"max_tokens\":10,\"stream\":" + stream
                        + ",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
                    assertEquals(200, m.statusCode(), m.body());
                    assertEquals("claude-sonnet-4.5", h.stub.last("/v1/messages").json().path("model").asText());
                    HttpResponse<String> r = h.post("/v1/responses", "{\"model\":\"house-codex\",\"stream\":" + stream + ",\"input\":\"hi\"}");
                    assertEquals(200, r.statusCode(), r.body());
                    assertEquals("gpt-5.1-codex", h.stub.last("/responses").json().path("model").asText());
                }
            }
        }
    }

    static final class ErrorTests extends WithHarness {

        static final String HI = ChatBehaviourTests.HI;

        @Test
        void malformedAndIncompleteRequestsAre400WithoutAnUpstreamCall() throws Exception {
            for (var c : List.of(
                    Map.entry("{not json", "not valid JSON"),
                    Map.entry("", "empty"),
                    Map.entry("[1,2]", "JSON object"),
                    Map.entry("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "'model'"),
                    Map.entry("{\"model\":\"gpt-4.1\"}", "'messages'"),
                    Map.entry("{\"model\":\"gpt-4.1\",\"messages\":[]}", "'messages'"))) {
                HttpResponse<String> r = h.post("/v1/chat/completions", c.getKey());
                assertEquals(400, r.statusCode(), c.getKey());
                JsonNode err = json(r.body()).path("error");
                assertEquals("invalid_request_error", err.path("type").asText());
                assertTrue(err.path("message").asText().contains(c.getValue()), c.getKey() + " -> " + r.body());
            }
            assertEquals(0, h.stub.count("/chat/completions"));
        }

        @Test
        void upstreamErrorsKeepStatusMessageAndCode() throws Exception {
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(400,
                "{\"error\":{\"message\":\"prompt token count of 200000 exceeds the limit of 128000\",\"code\":\"model_max_prompt_tokens_exceeded\"}}"));
            HttpResponse<String> r = h.post("/v1/chat/completions", HI);
            assertEquals(400, r.statusCode());
            JsonNode err = json(r.body()).path("error");
            assertEquals("prompt token count of 200000 exceeds the limit of 128000", err.path("message").asText());
            assertEquals("model_max_prompt_tokens_exceeded", err.path("code").asText());
            assertEquals("invalid_request_error", err.path("type").asText());
            assertTrue(err.has("param"));
        }

        /** Each Copilot error the client may meet carries what it means and the one thing to do, in both API shapes. */
        @Test
        void copilotsOwnErrorsSayWhatToDo() throws Exception {
            record Case(int status, String body, String hint) {}
            for (Case c : List.of(
                    new Case(466, "{\"error\":{\"message\":\"client version too old\"}}", "COPILOT_API_COPILOT_CHAT_VERSION"),
                    new Case(421, "Misdirected Request", "--account-type"),
                    new Case(402, "{\"error\":{\"message\":\"You have exceeded your premium request allowance\",\"code\":\"quota_exceeded\"}}",
                        "until it resets"),
                    new Case(400, "{\"error\":{\"message\":\"The requested model is not supported.\",\"code\":\"model_not_supported\"}}",
                        "not enabled for the account"),
                    new Case(400, "{\"error\":{\"message\":\"Vision is disabled for this organization\"}}", "images are turned off"),
                    new Case(403, "{\"error\":{\"message\":\"Forbidden by policy\"}}", "organisation's policy"))) {
                h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(c.status(), c.body()));
                HttpResponse<String> r = h.post("/v1/chat/completions", HI);
                assertEquals(c.status(), r.statusCode(), r.body());
                String message = json(r.body()).path("error").path("message").asText();
                assertTrue(message.contains(c.hint()), c.status() + ": " + message);
                assertTrue(message.startsWith(c.body().startsWith("{") ? json(c.body()).path("error").path("message").asText() : c.body()),
                    "Copilot's own words come first: " + message);
            }
            h.stub.enqueue("/v1/messages", StubUpstream.Reply.json(466, "{\"error\":{\"message\":\"client version too old\"}}"));
            HttpResponse<String> anthropic = h.post("/v1/messages", CopilotApiTests.MESSAGES_HI);
            assertEquals(466, anthropic.statusCode());
            assertTrue(json(anthropic.body()).path("error").path("message").asText().contains("COPILOT_API_COPILOT_CHAT_VERSION"), anthropic.body());
        }

        @Test
        void rateLimitKeepsRetryAfter() throws Exception {
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(429, "{\"error\":{\"message\":\"Too many requests\"}}",
                Map.of("retry-after", "7")));
            HttpResponse<String> r = h.post("/v1/chat/completions", HI);
            assertEquals(429, r.statusCode());
            assertEquals("7", r.headers().firstValue("retry-after").orElse(null));
            assertEquals("rate_limit_error", json(r.body()).path("error").path("type").asText());
            assertEquals("Too many requests", json(r.body()).path("error").path("message").asText());
        }

        @Test
        void a401ThatSurvivesTheRetryIsReported() throws Exception {
            String body = "{\"error\":{\"message\":\"unauthorized: token expired\",\"code\":\"unauthorized\"}}";
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(401, body));
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(401, body));
            HttpResponse<String> r = h.post("/v1/chat/completions", HI);
            assertEquals(502, r.statusCode(), "Copilot refusing copilot-api is not the client's key being wrong");
            assertEquals("api_error", json(r.body()).path("error").path("type").asText());
            assertTrue(json(r.body()).path("error").path("message").asText().contains("copilot-api check-usage"), r.body());
            assertEquals(2, h.stub.count("/chat/completions"), "retried exactly once");
        }

        @Test
        void serverErrorsAndNonJsonBodies() throws Exception {
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(503, "upstream connect error"));
            HttpResponse<String> r = h.post("/v1/chat/completions", HI);
            assertEquals(503, r.statusCode());
            assertEquals("upstream connect error", json(r.body()).path("error").path("message").asText());
            assertEquals("api_error", json(r.body()).path("error").path("type").asText());
        }

        @Test
        void streamingRequestsGetHttpErrorsBeforeTheFirstByte() throws Exception {
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(400, "{\"error\":{\"message\":\"bad thing\",\"code\":\"x\"}}"));
            HttpResponse<String> r = h.post("/v1/chat/completions", HI.replace("{\"model\"", "{\"stream\":true,\"model\""));
            assertEquals(400, r.statusCode());
            assertEquals("bad thing", json(r.body()).path("error").path("message").asText());
        }

        @Test
        void unknownRouteIsAJson404() throws Exception {
            HttpResponse<String> r = h.get("/v1/nope");
            assertEquals(404, r.statusCode());
            assertTrue(json(r.body()).path("error").path("message").asText().contains("/v1/nope"));
        }

        @Test
        void aModelNotServedOnAnEndpointIsRefusedBeforeCallingCopilot() throws Exception {
            StubUpstream stub = StubUpstream.start();
            stub.models().addObject().put("id", "messages-only").put("object", "model")
                .putArray("supported_endpoints").add("/v1/messages");
            try (Harness other = new Harness(stub, Map.of(), o -> { })) {
                HttpResponse<String> r = other.post("/v1/chat/completions", HI.replace("gpt-4.1", "messages-only"));
                assertEquals(400, r.statusCode());
                JsonNode err = json(r.body()).path("error");
                assertEquals("unsupported_api_for_model", err.path("code").asText());
                assertTrue(err.path("message").asText().contains("/v1/messages"), r.body());
                assertEquals(0, stub.count("/chat/completions"));
            }
        }

        @Test
        void unreachableUpstreamIs502() throws Exception {
            StubUpstream stub = StubUpstream.start();
            try (Harness dead = new Harness(stub, Map.of(), o -> { })) {
                stub.close();
                HttpResponse<String> r = dead.post("/v1/chat/completions", HI);
                assertEquals(502, r.statusCode(), r.body());
                assertTrue(json(r.body()).path("error").path("message").asText().contains("127.0.0.1"), r.body());
            }
        }
    }

    // ==== The Anthropic surface ====

    static final class ModelResolverTests {
        static final List<JsonNode> CATALOG;

        static {
            List<JsonNode> list = new ArrayList<>();
            for (String id : List.of("gpt-4.1", "claude-sonnet-4", "claude-sonnet-4.5", "claude-sonnet-4.5-1m", "claude-opus-4.1",
                    "claude-haiku-4.5", "claude-3.5-sonnet", "gemini-2.5-pro")) {
                list.add(json("{\"id\":\"" + id + "\",\"capabilities\":{\"type\":\"chat\"}}"));
            }
            list.add(json("{\"id\":\"text-embedding-3-small\",\"capabilities\":{\"type\":\"embeddings\"}}"));
            CATALOG = List.copyOf(list);
        }

        static String resolve(String id) {
            return resolve(id, false, CopilotApi.ModelRouting.NONE);
        }

        static String resolve(String id, boolean wants1m, CopilotApi.ModelRouting routing) {
            return CopilotApi.Anthropic.ModelResolver.resolve(id, wants1m, CATALOG, routing).upstream();
        }

        @Test
        void claudeIdsAsClientsSendThem() {
            assertEquals("gpt-4.1", resolve("gpt-4.1"));
            assertEquals("claude-sonnet-4.5", resolve("claude-sonnet-4-5-20250929"));
            assertEquals("claude-haiku-4.5", resolve("claude-haiku-4-5-20251001"));
            assertEquals("claude-opus-4.1", resolve("claude-opus-4-1-20250805"));
            assertEquals("claude-sonnet-4", resolve("claude-sonnet-4-20250514"));
            assertEquals("claude-sonnet-4.5", resolve("claude-sonnet-4-5"));
            assertEquals("claude-3.5-sonnet", resolve("claude-3-5-sonnet-latest"));
        }

        @Test
        void familyNamesOneMillionAndFallbacks() {
            assertEquals("claude-sonnet-4.5", resolve("sonnet"));
            assertEquals("claude-opus-4.1", resolve("opus"));
            assertEquals("claude-haiku-4.5", resolve("haiku"));
            assertEquals("claude-sonnet-4.5-1m", resolve("claude-sonnet-4-5-20250929[1m]"));
            assertEquals("claude-sonnet-4.5-1m", resolve("claude-sonnet-4-5-20250929", true, CopilotApi.ModelRouting.NONE));
            assertEquals("claude-opus-4.1", resolve("claude-opus-4-1[1m]"), "no -1m variant: the plain model");
            assertEquals("claude-opus-4.1", resolve("claude-opus-4-7-20260101"), "an unknown opus: the newest opus");
            assertEquals("claude-haiku-4.5", resolve("claude-3-haiku-20240307"));
            var fallback = new CopilotApi.ModelRouting(Map.of(), java.util.Optional.of("gpt-4.1"));
            assertEquals("gpt-4.1", resolve("claude-mythos-5", false, fallback));
        }

        @Test
        void theUserMapWinsAndUnknownsAre404() {
            var routing = new CopilotApi.ModelRouting(Map.of("claude-sonnet-4-5-20250929", "gpt-4.1", "fast", "claude-haiku-4-5"), java.util.Optional.empty());
            assertEquals("gpt-4.1", resolve("claude-sonnet-4-5-20250929", false, routing));
            assertEquals("claude-haiku-4.5", resolve("fast", false, routing), "a mapped target is resolved too");
            var e = assertThrows(CopilotApi.ApiError.class, () -> resolve("llama-3-70b"));
            assertEquals(404, e.status());
            assertTrue(e.getMessage().contains("gpt-4.1"), e.getMessage());
            assertFalse(e.getMessage().contains("text-embedding"), e.getMessage());
            e = assertThrows(CopilotApi.ApiError.class, () -> resolve("claude-sonet-4.5"));
            assertTrue(e.getMessage().contains("Close matches: claude-sonnet-4.5,"), "the nearest name first: " + e.getMessage());
            assertThrows(CopilotApi.ApiError.class, () -> resolve("claude-mythos-5"));
        }

        @Test
        void modelMapOptionsAndEnvironment() {
            var r = CopilotApi.ModelRouting.from(List.of("a=b"), null, Map.of("COPILOT_API_MODEL_MAP", "c=d, e=f", "COPILOT_API_FALLBACK_MODEL", "gpt-4.1"));
            assertEquals(Map.of("a", "b", "c", "d", "e", "f"), r.userMap());
            assertEquals("gpt-4.1", r.fallback().orElseThrow());
            assertThrows(CopilotApi.UserFacingException.class, () -> CopilotApi.ModelRouting.from(List.of("nope"), null, Map.of()));
        }
    }

    /** Requests against the mid-2026 catalog (WIRE.md "Model churn"): new Claude families, GPT-5.6/6, Gemini 3.1. */
    abstract static class WithMid2026Catalog extends WithHarness {
        @Override
        Harness harness() throws IOException {
            return new Harness(StubUpstream.start().mid2026Models(), Map.of(), o -> { });
        }

        static String message(String model, String extra) {
            return "{\"model\":\"" + model + "\",\"max_tokens\":2000," + extra + "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
        }

        static String chat(String model) {
            return "{\"model\":\"" + model + "\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
        }

        static String responses(String model) {
            return "{\"model\":\"" + model + "\",\"input\":\"hi\"}";
        }
    }

    /** Names resolved by the catalog's families and ids, the same way on the three APIs; unknown names are 404s. */
    static final class ModelNamesTests extends WithMid2026Catalog {
        @Test
        void claudeCodeNamesReachTheCatalogModelOnTheMessagesRoute() throws Exception {
            for (var c : List.of(
                    Map.entry("fable", "claude-fable-5.1"),
                    Map.entry("claude-fable", "claude-fable-5.1"),
                    Map.entry("claude-fable-5-20261001", "claude-fable-5"),
                    Map.entry("opus", "claude-opus-5"),
                    Map.entry("sonnet", "claude-sonnet-5"),
                    Map.entry("haiku", "claude-haiku-4.5"),
                    Map.entry("claude-opus-4-8-20260601", "claude-opus-4.8"),
                    Map.entry("claude-opus-4-8-fast", "claude-opus-4.8-fast"),
                    Map.entry("claude-opus-4-8-fast-20260601", "claude-opus-4.8-fast"),
                    Map.entry("claude-opus-4.8[1m]", "claude-opus-4.8"),
                    Map.entry("claude-sonnet-4-5-20250929", "claude-sonnet-4.5"),
                    Map.entry("claude-opus-4-9-20261201", "claude-opus-5"))) {
                h.stub.clear();
                HttpResponse<String> r = h.post("/v1/messages", message(c.getKey(), ""));
                assertEquals(200, r.statusCode(), c.getKey() + ": " + r.body());
                assertEquals(c.getValue(), h.stub.last("/v1/messages").json().path("model").asText(), c.getKey());
                assertEquals(c.getKey(), json(r.body()).path("model").asText(), "the name asked comes back");
            }
        }

        @Test
        void newGptNamesReachedThroughClaudeCodeAreTranslated() throws Exception {
            for (var c : List.of(Map.entry("gpt-6-sol", "gpt-6-sol"), Map.entry("GPT-5.6-Luna", "gpt-5.6-luna"),
                    Map.entry("gpt-5-6-sol", "gpt-5.6-sol"), Map.entry("sol", "gpt-6-sol"))) {
                h.stub.clear();
                HttpResponse<String> r = h.post("/v1/messages", message(c.getKey(), ""));
                assertEquals(200, r.statusCode(), c.getKey() + ": " + r.body());
                assertEquals(c.getValue(), h.stub.last("/responses").json().path("model").asText(), c.getKey());
            }
        }

        @Test
        void theChatAndResponsesRoutesResolveTheSameWay() throws Exception {
            for (var c : List.of(Map.entry("fable", "/chat/completions:claude-fable-5.1"), Map.entry("flash", "/chat/completions:gemini-3.1-flash"),
                    Map.entry("gpt-5-6-sol", "/responses:gpt-5.6-sol"), Map.entry("claude-sonnet-4-5-20250929", "/chat/completions:claude-sonnet-4.5"),
                    Map.entry("claude-opus-4-8-fast", "/chat/completions:claude-opus-4.8-fast"))) {
                String path = c.getValue().split(":")[0];
                String upstream = c.getValue().split(":")[1];
                for (String route : List.of("/v1/chat/completions", "/v1/responses")) {
                    h.stub.clear();
                    HttpResponse<String> r = h.post(route, route.endsWith("responses") ? responses(c.getKey()) : chat(c.getKey()));
                    assertEquals(200, r.statusCode(), route + " " + c.getKey() + ": " + r.body());
                    assertEquals(upstream, h.stub.last(path).json().path("model").asText(), route + " " + c.getKey());
                }
            }
        }

        @Test
        void anUnknownNameIsA404ListingCloseMatchesOnEachApiAndTheNextRequestIsServed() throws Exception {
            HttpResponse<String> r = h.post("/v1/messages", message("claude-mythos-5", ""));
            assertEquals(404, r.statusCode(), r.body());
            assertEquals("not_found_error", json(r.body()).path("error").path("type").asText(), r.body());
            r = h.post("/v1/chat/completions", chat("gpt-7-sol"));
            assertEquals(404, r.statusCode(), r.body());
            JsonNode error = json(r.body()).path("error");
            assertEquals("model_not_found", error.path("code").asText(), r.body());
            assertTrue(error.path("message").asText().contains("Close matches: gpt-6-sol"), r.body());
            r = h.post("/v1/responses", responses("gemini-3.1-flush"));
            assertEquals(404, r.statusCode(), r.body());
            assertTrue(json(r.body()).path("error").path("message").asText().contains("Close matches: gemini-3.1-flash"), r.body());
            assertEquals(0, h.stub.requests().stream().filter(q -> q.method().equals("POST")).count(), "nothing reached Copilot");
            assertEquals(200, h.post("/v1/chat/completions", chat("gemini-3.1-flash")).statusCode());
        }
    }

    /** A catalog that came back empty (a usage-based account's billing notice): chat names go to Copilot as asked. */
    static final class EmptyCatalogNamesTests extends WithHarness {
        @Override
        Harness harness() throws IOException {
            StubUpstream stub = StubUpstream.start();
            stub.enqueue("/models", StubUpstream.Reply.json(200, "\"Your billing plan has changed to usage-based billing and model multipliers "
                + "no longer apply. Please update your client to the latest version to see the new billing information.\""));
            return new Harness(stub, Map.of(), o -> { });
        }

        @Test
        void theChatRouteStillPassesTheNameThrough() throws Exception {
            HttpResponse<String> r = h.post("/v1/chat/completions", CHAT_HI);
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("gpt-4.1", h.stub.last("/chat/completions").json().path("model").asText());
            assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
        }
    }

    /** What the Claude models of mid-2026 want on /v1/messages: inline system turns from 4.8, thinking display from 4.7, speed. */
    static final class ClaudeVersionTests extends WithMid2026Catalog {
        static final String WITH_SYSTEM_TURN = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"},"
            + "{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"and now?\"}]}";

        @Test
        void anInlineSystemMessageIsAUserTurnBefore48AndStaysSystemFrom48() throws Exception {
            for (var c : List.of(Map.entry("claude-opus-4.7", "user"), Map.entry("claude-sonnet-4.5", "user"),
                    Map.entry("claude-opus-4.8", "system"), Map.entry("claude-fable-5.1", "system"))) {
                HttpResponse<String> r = h.post("/v1/messages", "{\"model\":\"" + c.getKey() + "\",\"max_tokens\":100," + WITH_SYSTEM_TURN);
                assertEquals(200, r.statusCode(), c.getKey() + ": " + r.body());
                assertEquals(c.getValue(), h.stub.last("/v1/messages").json().path("messages").get(2).path("role").asText(), c.getKey());
            }
        }

        static String thinking(String model, String display, boolean stream) {
            String d = display == null ? "" : ",\"display\":\"" + display + "\"";
            return message(model, "\"stream\":" + stream + ",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024" + d + "},");
        }

        @Test
        void from47ThinkingIsAskedSummarizedAndOmittedTextIsDroppedButTheSignatureKept() throws Exception {
            HttpResponse<String> r = h.post("/v1/messages", thinking("claude-opus-4.8", "omitted", false));
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("summarized", h.stub.last("/v1/messages").json().path("thinking").path("display").asText());
            JsonNode block = json(r.body()).path("content").get(0);
            assertEquals("thinking", block.path("type").asText(), r.body());
            assertEquals("", block.path("thinking").asText(), "the client asked for omitted: " + r.body());
            assertEquals(StubUpstream.REASONING_SIGNATURE, block.path("signature").asText());

            r = h.post("/v1/messages", thinking("claude-opus-4.8", "omitted", true));
            var ev = AnthropicNativeTests.events(r.body());
            assertTrue(ev.stream().noneMatch(e -> e.getValue().path("delta").path("type").asText().equals("thinking_delta")), r.body());
            assertTrue(ev.stream().anyMatch(e -> e.getValue().path("delta").path("signature").asText().equals(StubUpstream.REASONING_SIGNATURE)), r.body());
            assertEquals("message_stop", ev.get(ev.size() - 1).getKey());

            r = h.post("/v1/messages", thinking("claude-opus-4.7", null, false));
            assertEquals("summarized", h.stub.last("/v1/messages").json().path("thinking").path("display").asText());
            assertFalse(json(r.body()).path("content").get(0).path("thinking").asText().isEmpty(), "no display asked: the summary is shown: " + r.body());
            r = h.post("/v1/messages", thinking("claude-opus-4.8", "summarized", true));
            assertTrue(AnthropicNativeTests.events(r.body()).stream()
                .anyMatch(e -> e.getValue().path("delta").path("type").asText().equals("thinking_delta")), r.body());

            r = h.post("/v1/messages", thinking("claude-sonnet-4.5", "omitted", false));
            assertFalse(h.stub.last("/v1/messages").json().path("thinking").has("display"), "before 4.7: no display sent");
            assertFalse(json(r.body()).path("content").get(0).path("thinking").asText().isEmpty(), r.body());
        }

        @Test
        void speedFastPicksTheFastVariantWhereTheCatalogListsOne() throws Exception {
            HttpResponse<String> r = h.post("/v1/messages", message("claude-opus-4-8", "\"speed\":\"fast\","));
            assertEquals(200, r.statusCode(), r.body());
            JsonNode sent = h.stub.last("/v1/messages").json();
            assertEquals("claude-opus-4.8-fast", sent.path("model").asText());
            assertFalse(sent.has("speed"));
            assertEquals("claude-opus-4-8", json(r.body()).path("model").asText());
            assertEquals(200, h.post("/v1/messages", message("claude-opus-5", "\"speed\":\"fast\",")).statusCode());
            sent = h.stub.last("/v1/messages").json();
            assertEquals("claude-opus-5", sent.path("model").asText(), "no fast variant listed: the model itself");
            assertFalse(sent.has("speed"));
        }
    }

    /** Claude models Copilot serves on /v1/messages: forwarded natively, cleaned, relayed event by event. */
    static final class AnthropicNativeTests extends WithHarness {
        static String claudeCodeRequest() throws IOException {
            return Files.readString(fixtures("anthropic").resolve("claude-code-request.json"));
        }

        /**
         * The native body is the client's own bytes where nothing changed: the messages arrive at Copilot exactly as
         * sent (escapes and spacing kept), and the changed fields are written; the whole still parses to the cleaned request.
         */
        @Test
        void unchangedPartsOfTheBodyReachCopilotAsTheClientSentThem() throws Exception {
            String messagesJson = "[ {\"role\": \"user\",  \"content\": \"caf\\u00e9 \\/ ok\"} ]";
            String body = "{\"model\":\"claude-sonnet-4-5-20250929\", \"max_tokens\": 100, \"metadata\": {\"user_id\": \"u\"},"
                + " \"system\": \"x-anthropic-billing-header: cc_version=1;\\nBe brief.\", \"messages\": " + messagesJson + "}";
            assertEquals(200, messages(body).statusCode());
            StubUpstream.Recorded sent = h.stub.last("/v1/messages");
            assertTrue(sent.body().contains("\"messages\":" + messagesJson), "messages copied byte for byte: " + sent.body());
            JsonNode upstream = sent.json();
            assertEquals("claude-sonnet-4.5", upstream.path("model").asText(), "changed fields are written");
            assertEquals("Be brief.", upstream.path("system").asText());
            assertFalse(upstream.has("metadata"));
            assertEquals("caf\u00e9 / ok", upstream.path("messages").get(0).path("content").asText());
        }

        @Test
        void aSplicedBodyIsTheSameJsonAsTheEditedTree() throws Exception {
            byte[] raw = claudeCodeRequest().getBytes(UTF_8);
            ObjectNode original = (ObjectNode) CopilotApi.JSON.readTree(raw);
            ObjectNode edited = CopilotApi.Anthropic.AnthropicNative.prepare(original, "claude-sonnet-4.5",
                h.stub.models().get(0)).body();
            assertEquals(edited, CopilotApi.JSON.readTree(CopilotApi.Json.splice(raw, original, edited)));
            ObjectNode other = original.deepCopy();
            other.withArray("messages").addObject().put("role", "user").put("content", "more");
            assertEquals(other, CopilotApi.JSON.readTree(CopilotApi.Json.splice(raw, original, other)), "a changed array is written anew");
        }

        HttpResponse<String> messages(String body, String... headers) throws Exception {
            HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(h.url("/v1/messages?beta=true")))
                .header("content-type", "application/json").header("anthropic-version", "2023-06-01")
                .POST(HttpRequest.BodyPublishers.ofString(body));
            for (int i = 0; i < headers.length; i += 2) b.header(headers[i], headers[i + 1]);
            return h.client.send(b.build(), HttpResponse.BodyHandlers.ofString());
        }

        /** event: lines paired with their data. */
        static List<Map.Entry<String, JsonNode>> events(String sse) {
            List<Map.Entry<String, JsonNode>> out = new ArrayList<>();
            String name = null;
            for (String line : sse.split("\n")) {
                if (line.startsWith("event: ")) name = line.substring(7);
                else if (line.startsWith("data: ")) out.add(Map.entry(name == null ? "" : name, json(line.substring(6))));
            }
            return out;
        }

        @Test
        void aClaudeCodeRequestIsCleanedForCopilot() throws Exception {
            HttpResponse<String> r = messages(claudeCodeRequest(), "x-api-key", "anything",
                "anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27");
            assertEquals(200, r.statusCode(), r.body());
            StubUpstream.Recorded sent = h.stub.last("/v1/messages");
            JsonNode body = sent.json();
            assertEquals("claude-sonnet-4.5", body.path("model").asText());
            assertFalse(sent.body().contains("x-anthropic-billing-header"), "billing header removed");
            assertEquals(2, body.path("system").size(), "the other system blocks stay, with cache_control");
            assertTrue(body.path("system").get(0).has("cache_control"));
            for (String dropped : List.of("context_management", "metadata")) assertFalse(body.has(dropped), dropped);
            assertFalse(sent.body().contains("defer_loading"));
            assertFalse(sent.body().contains("eager_input_streaming"));
            assertEquals(12, body.path("tools").size());
            assertEquals("enabled", body.path("thinking").path("type").asText());
            assertEquals(31999, body.path("thinking").path("budget_tokens").asInt(), "below max_tokens, within the model's range");
            assertFalse(body.path("thinking").has("display"));
            assertEquals("interleaved-thinking-2025-05-14", sent.headers().get("anthropic-beta"));
            assertEquals("2023-06-01", sent.headers().get("anthropic-version"));
            assertEquals("user", sent.headers().get("x-initiator"));
            var ev = events(r.body());
            assertEquals("message_start", ev.get(0).getKey());
            assertEquals("claude-sonnet-4-5-20250929", ev.get(0).getValue().path("message").path("model").asText(), "the requested id comes back");
            assertEquals("message_stop", ev.get(ev.size() - 1).getKey());
            for (var e : ev) assertEquals(e.getKey(), e.getValue().path("type").asText(), "event name equals type");
        }

        @Test
        void theSameClaudeCodeRequestThroughTheTranslator() throws Exception {
            String request = claudeCodeRequest().replace("\"claude-sonnet-4-5-20250929\"", "\"gpt-4.1\"");
            HttpResponse<String> r = messages(request, "anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14");
            assertEquals(200, r.statusCode(), r.body());
            assertEquals(0, h.stub.count("/v1/messages"));
            StubUpstream.Recorded sent = h.stub.last("/chat/completions");
            JsonNode chat = sent.json();
            assertEquals("gpt-4.1", chat.path("model").asText());
            assertFalse(sent.body().contains("x-anthropic-billing-header"));
            assertFalse(sent.body().contains("cache_control"));
            assertFalse(sent.body().contains("defer_loading"));
            assertEquals("system", chat.path("messages").get(0).path("role").asText());
            assertEquals(12, chat.path("tools").size());
            assertEquals("function", chat.path("tools").get(0).path("type").asText());
            assertFalse(chat.has("user"), "Claude Code's JSON user_id is not forwarded");
            assertTrue(chat.path("stream_options").path("include_usage").asBoolean());
            var ev = events(r.body());
            assertEquals("message_start", ev.get(0).getKey());
            assertEquals("message_stop", ev.get(ev.size() - 1).getKey());
            assertTrue(ev.stream().anyMatch(e -> e.getKey().equals("content_block_start")
                && e.getValue().path("content_block").path("type").asText().equals("tool_use")), "the stub called Bash: " + r.body());
            JsonNode delta = ev.stream().filter(e -> e.getKey().equals("message_delta")).findFirst().orElseThrow().getValue();
            assertEquals("tool_use", delta.path("delta").path("stop_reason").asText());
        }

        @Test
        void serverToolsAndUnknownFieldsAreDropped() throws Exception {
            String body = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
                + "{\"role\":\"system\",\"content\":\"be brief\"}],\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"},"
                + "{\"name\":\"Bash\",\"description\":\"run\",\"input_schema\":{\"type\":\"object\"},\"eager_input_streaming\":true}],"
                + "\"context_management\":{\"edits\":[]},\"thinking\":{\"type\":\"adaptive\"},\"output_config\":{\"effort\":\"low\"}}";
            HttpResponse<String> r = messages(body);
            assertEquals(200, r.statusCode(), r.body());
            JsonNode sent = h.stub.last("/v1/messages").json();
            assertEquals(1, sent.path("tools").size());
            assertEquals("Bash", sent.path("tools").get(0).path("name").asText());
            assertEquals("user", sent.path("messages").get(1).path("role").asText(), "no system role inside messages");
            assertFalse(sent.has("thinking"), "a budget below the model's minimum of 1024 cannot fit under max_tokens 100: " + sent);
            assertEquals(200, messages(body.replace("\"max_tokens\":100", "\"max_tokens\":20000")).statusCode());
            assertEquals(2048, h.stub.last("/v1/messages").json().path("thinking").path("budget_tokens").asInt(),
                "adaptive with effort low");
        }

        @Test
        void aBillingHeaderLineIsRemovedButTheInstructionsAfterItStay() throws Exception {
            String body = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":50,\"system\":\"x-anthropic-billing-header: cc_version=1;\\nBe brief.\","
                + "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
            assertEquals(200, messages(body).statusCode());
            assertEquals("Be brief.", h.stub.last("/v1/messages").json().path("system").asText());
            String blocks = body.replace("\"system\":\"x-anthropic-billing-header: cc_version=1;\\nBe brief.\"",
                "\"system\":[{\"type\":\"text\",\"text\":\"x-anthropic-billing-header: cc_version=1;\\nBe brief.\",\"cache_control\":{\"type\":\"ephemeral\"}}]");
            assertEquals(200, messages(blocks).statusCode());
            JsonNode system = h.stub.last("/v1/messages").json().path("system");
            assertEquals("Be brief.", system.get(0).path("text").asText());
            assertEquals("ephemeral", system.get(0).path("cache_control").path("type").asText());
        }

        @Test
        void agentInitiatorAndVisionForAToolResultWithAnImage() throws Exception {
            String body = "{\"model\":\"claude-haiku-4-5-20251001\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":\"look\"},"
                + "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Read\",\"input\":{}}]},"
                + "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":[{\"type\":\"image\","
                + "\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"iVBORw0KGgo=\"}}]}]}]}";
            HttpResponse<String> r = messages(body);
            assertEquals(200, r.statusCode(), r.body());
            Map<String, String> headers = h.stub.last("/v1/messages").headers();
            assertEquals("agent", headers.get("x-initiator"));
            assertEquals("true", headers.get("copilot-vision-request"));
            assertEquals("claude-haiku-4-5-20251001", json(r.body()).path("model").asText());
        }

        @Test
        void streamIsRelayedEventByEventAndACutEndsWithAnErrorEvent() throws Exception {
            List<String> framed = List.of(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4.5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
                "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n");
            h.stub.enqueue("/v1/messages", StubUpstream.Reply.events(framed).delayMs(1500));
            long start = System.nanoTime();
            HttpResponse<InputStream> r = h.client.send(HttpRequest.newBuilder(URI.create(h.url("/v1/messages")))
                .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString("{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"))
                .build(), HttpResponse.BodyHandlers.ofInputStream());
            BufferedReader reader = new BufferedReader(new InputStreamReader(r.body(), UTF_8));
            String first = reader.readLine();
            long firstMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
            StringBuilder all = new StringBuilder(first).append('\n');
            for (String line = reader.readLine(); line != null; line = reader.readLine()) all.append(line).append('\n');
            long totalMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
            assertEquals("event: message_start", first);
            assertTrue(firstMs < totalMs - 2000, "first event after " + firstMs + " of " + totalMs + " ms");
            var ev = events(all.toString());
            assertEquals("error", ev.get(ev.size() - 1).getKey(), all.toString());
            assertEquals("api_error", ev.get(ev.size() - 1).getValue().path("error").path("type").asText());
            assertTrue(ev.stream().noneMatch(e -> e.getKey().equals("message_stop")), "no fake message_stop");
        }

        /** Upstream silence past the keep-alive interval (15 s by default, half a second here): a ping keeps Claude Code waiting. */
        @Test
        void silenceGetsAPing() throws Exception {
            CopilotApi.Timeouts quickPings = new CopilotApi.Timeouts(Duration.ofSeconds(60), Duration.ofSeconds(120), Duration.ofMinutes(10),
                Duration.ofSeconds(3), Duration.ofMillis(500));
            List<String> framed = List.of(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":1}}\n\n",
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
            try (Harness quick = new Harness(StubUpstream.start(), Map.of(), o -> { }, CopilotApi.Operator.Controls.none(), quickPings)) {
                quick.stub.enqueue("/v1/messages", StubUpstream.Reply.events(framed).delayMs(1500));
                HttpResponse<String> r = quick.post("/v1/messages",
                    "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
                var names = events(r.body()).stream().map(Map.Entry::getKey).toList();
                assertEquals("message_start", names.get(0));
                assertTrue(names.subList(1, names.size() - 1).contains("ping"), names.toString());
                assertEquals("message_stop", names.get(names.size() - 1));
                h.stub.enqueue("/v1/messages", StubUpstream.Reply.events(framed).delayMs(1500));
                HttpResponse<String> defaults = messages("{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
                assertFalse(events(defaults.body()).stream().anyMatch(e -> e.getKey().equals("ping")), "no ping within the default 15 s");
            }
        }

        @Test
        void upstreamErrorsKeepTheirWordingInTheAnthropicShape() throws Exception {
            h.stub.enqueue("/v1/messages", StubUpstream.Reply.json(400,
                "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"prompt is too long: 250000 tokens > 200000 maximum\"}}"));
            HttpResponse<String> r = messages("{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
            assertEquals(400, r.statusCode());
            JsonNode b = json(r.body());
            assertEquals("error", b.path("type").asText());
            assertEquals("invalid_request_error", b.path("error").path("type").asText());
            assertEquals("prompt is too long: 250000 tokens > 200000 maximum", b.path("error").path("message").asText());
            h.stub.enqueue("/v1/messages", StubUpstream.Reply.json(429, "{\"error\":{\"message\":\"slow down\"}}", Map.of("retry-after", "3")));
            r = messages("{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
            assertEquals(429, r.statusCode());
            assertEquals("rate_limit_error", json(r.body()).path("error").path("type").asText());
            assertEquals("3", r.headers().firstValue("retry-after").orElse(null));
        }

        @Test
        void badRequestsAreAnthropicShaped400sWithoutAnUpstreamCall() throws Exception {
            for (var c : List.of(
                    Map.entry("{oops", "not valid JSON"),
                    Map.entry("{\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "model"),
                    Map.entry("{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":10}", "messages"),
                    Map.entry("{\"model\":\"claude-sonnet-4.5\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "max_tokens"),
                    Map.entry("{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":\"ten\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "max_tokens"))) {
                HttpResponse<String> r = messages(c.getKey());
                assertEquals(400, r.statusCode(), c.getKey());
                JsonNode b = json(r.body());
                assertEquals("error", b.path("type").asText(), r.body());
                assertEquals("invalid_request_error", b.path("error").path("type").asText());
                assertTrue(b.path("error").path("message").asText().contains(c.getValue()), r.body());
            }
            assertEquals(0, h.stub.count("/v1/messages"));
            HttpResponse<String> r = messages("{\"model\":\"llama-3\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
            assertEquals(404, r.statusCode());
            assertEquals("not_found_error", json(r.body()).path("error").path("type").asText());
        }
    }

    static final class CountTokensTests extends WithHarness {
        int count(String body) throws Exception {
            HttpResponse<String> r = h.post("/v1/messages/count_tokens?beta=true", body);
            assertEquals(200, r.statusCode(), r.body());
            return json(r.body()).path("input_tokens").asInt();
        }

        @Test
        void aRealisticRequestGetsARealisticEstimateWhenCopilotCannotCount() throws Exception {
            String request = AnthropicNativeTests.claudeCodeRequest();
            h.stub.enqueue(StubUpstream.COUNT_TOKENS, StubUpstream.Reply.json(503, "{\"error\":{\"message\":\"busy\"}}"));
            int n = count(request);
            int chars = request.length();
            assertTrue(n > chars / 8 && n < chars / 2, n + " tokens for " + chars + " characters");
            assertEquals(0, h.stub.count("/v1/messages"), "no message was sent");
            assertEquals(1, h.stub.count(StubUpstream.COUNT_TOKENS), "Copilot was asked first");
        }

        @Test
        void aClaudeModelIsCountedByCopilotWithTheAnthropicHeadersAndTheCleanedBody() throws Exception {
            String request = AnthropicNativeTests.claudeCodeRequest();
            HttpResponse<String> r = h.send("POST", "/v1/messages/count_tokens?beta=true", request,
                "anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14");
            assertEquals(200, r.statusCode(), r.body());
            StubUpstream.Recorded sent = h.stub.last(StubUpstream.COUNT_TOKENS);
            assertNotNull(sent, "Copilot's count_tokens was called");
            assertEquals(StubUpstream.exactTokens(sent.json()), json(r.body()).path("input_tokens").asInt(), "Copilot's own count");
            assertEquals("claude-sonnet-4.5", sent.json().path("model").asText());
            assertFalse(sent.body().contains("x-anthropic-billing-header"));
            assertFalse(sent.json().has("metadata"));
            assertEquals("2023-06-01", sent.headers().get("anthropic-version"));
            assertEquals("interleaved-thinking-2025-05-14", sent.headers().get("anthropic-beta"));
            assertEquals(0, h.stub.count("/v1/messages"), "counting sends no message");
            h.stub.clear();
            count("{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}");
            assertEquals(0, h.stub.count(StubUpstream.COUNT_TOKENS), "a model without /v1/messages is estimated locally");
        }

        @Test
        void moreContentCountsMoreAndImagesHaveACost() throws Exception {
            // Copilot cannot count the three Claude requests: the local estimate answers
            for (int i = 0; i < 3; i++) h.stub.enqueue(StubUpstream.COUNT_TOKENS, StubUpstream.Reply.json(500, "{\"error\":{\"message\":\"no\"}}"));
            String small = "{\"model\":\"claude-sonnet-4.5\",\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]}";
            String longer = small.replace("hello there", "hello there ".repeat(200));
            String image = "{\"model\":\"claude-sonnet-4.5\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hello there\"},"
                + "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"iVBORw0KGgo=\"}}]}]}";
            int a = count(small);
            assertTrue(a >= 2 && a < 20, "small: " + a);
            assertTrue(count(longer) > a + 300, "200 repetitions");
            assertTrue(count(image) > a + 1000, "an image");
            int gpt = count(small.replace("claude-sonnet-4.5", "gpt-4.1"));
            assertTrue(gpt < a || a == gpt, "Claude gets a margin: " + gpt + " vs " + a);
        }

        @Test
        void unknownModelIsAnError() throws Exception {
            HttpResponse<String> r = h.post("/v1/messages/count_tokens", "{\"model\":\"nope\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
            assertEquals(404, r.statusCode());
            assertEquals("error", json(r.body()).path("type").asText());
        }
    }

    /** The long tier: [1m] or the context-1m beta becomes contextTier on chat and Responses, never on native /v1/messages. */
    static final class LongContextTests extends WithMid2026Catalog {
        @Test
        void oneMillionAsksForTheLongTierOnChatAndResponsesWhereTheCatalogHasOne() throws Exception {
            assertEquals(200, h.post("/v1/chat/completions", chat("claude-opus-4.8[1m]")).statusCode());
            JsonNode sent = h.stub.last("/chat/completions").json();
            assertEquals("claude-opus-4.8", sent.path("model").asText());
            assertEquals("long_context", sent.path("contextTier").asText(), sent.toString());
            HttpResponse<String> r = h.post("/v1/responses", responses("gpt-6-sol[1m]"));
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("long_context", h.stub.last("/responses").json().path("contextTier").asText());
            r = h.post("/v1/chat/completions", chat("gpt-6-sol[1m]"));
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("long_context", h.stub.last("/responses").json().path("contextTier").asText(), "chat translated to /responses keeps it");
            r = h.post("/v1/responses", responses("sonnet[1m]"));
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("long_context", h.stub.last("/chat/completions").json().path("contextTier").asText(), "Responses translated to chat keeps it");
            h.stub.clear();
            assertEquals(200, h.post("/v1/chat/completions", chat("claude-opus-5[1m]")).statusCode(), "no long tier listed");
            assertFalse(h.stub.last("/chat/completions").json().has("contextTier"));
            assertEquals(200, h.post("/v1/chat/completions", chat("claude-opus-4.8")).statusCode());
            assertFalse(h.stub.last("/chat/completions").json().has("contextTier"), "not asked, not sent");
        }

        @Test
        void theMessagesApiSendsTheTierThroughTheTranslatorAndNeverNatively() throws Exception {
            HttpResponse<String> r = h.post("/v1/messages", message("gpt-6-sol[1m]", ""));
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("long_context", h.stub.last("/responses").json().path("contextTier").asText());
            r = h.send("POST", "/v1/messages", message("claude-opus-4-8", "\"contextTier\":\"long_context\","), "anthropic-beta", "context-1m-2025-08-07");
            assertEquals(200, r.statusCode(), r.body());
            assertFalse(h.stub.last("/v1/messages").json().has("contextTier"), "native /v1/messages refuses the field");
            r = h.post("/v1/messages", message("claude-opus-4.8[1m]", ""));
            assertEquals(200, r.statusCode(), r.body());
            assertFalse(h.stub.last("/v1/messages").json().has("contextTier"));
        }
    }

    /** The long tier in the catalog as clients see it, and the translated token limit that follows it. */
    static final class LongContextLimitsTests extends WithMid2026Catalog {
        @Test
        void modelsWithALongTierAreListedAgainAsOneMillionWithTheLongLimits() throws Exception {
            JsonNode data = json(h.get("/v1/models").body()).path("data");
            Map<String, JsonNode> byId = new HashMap<>();
            for (JsonNode m : data) byId.put(m.path("id").asText(), m);
            assertEquals(200000, byId.get("claude-opus-4.8").path("context_window").asInt());
            assertEquals(1000000, byId.get("claude-opus-4.8[1m]").path("context_window").asInt(), data.toString());
            assertEquals(128000, byId.get("gpt-6-sol[1m]").path("max_output_tokens").asInt());
            assertFalse(byId.containsKey("claude-opus-5[1m]"), "no long tier listed");
            assertFalse(byId.containsKey("claude-sonnet-4.5[1m]"));
            HttpResponse<String> one = h.get("/v1/models/claude-sonnet-5%5B1m%5D");
            assertEquals(200, one.statusCode(), one.body());
            assertEquals(1000000, json(one.body()).path("context_window").asInt());
            assertEquals(404, h.get("/v1/models/claude-opus-5%5B1m%5D").statusCode());
        }

        @Test
        void theTranslatedMaxTokensFollowTheTierAskedFor() throws Exception {
            String body = "{\"model\":\"gpt-6-sol\",\"max_tokens\":100000,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
            assertEquals(200, h.post("/v1/messages", body).statusCode());
            assertEquals(64000, h.stub.last("/responses").json().path("max_output_tokens").asInt(), "the default tier's limit");
            assertEquals(200, h.post("/v1/messages", body.replace("gpt-6-sol", "gpt-6-sol[1m]")).statusCode());
            assertEquals(100000, h.stub.last("/responses").json().path("max_output_tokens").asInt(), "within the long tier's 128000");
        }
    }

    /** What Copilot's /responses refuses is removed or refused here: service_tier, image_generation, a body over its cap. */
    static final class ResponsesHygieneTests extends WithHarness {
        @Test
        void serviceTierAndImageGenerationToolsAreStripped() throws Exception {
            String body = "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\",\"service_tier\":\"priority\",\"tools\":[{\"type\":\"image_generation\"},"
                + "{\"type\":\"function\",\"name\":\"Bash\",\"parameters\":{\"type\":\"object\"}}]}";
            HttpResponse<String> r = h.post("/v1/responses", body);
            assertEquals(200, r.statusCode(), r.body());
            JsonNode sent = h.stub.last("/responses").json();
            assertFalse(sent.has("service_tier"), sent.toString());
            assertEquals(1, sent.path("tools").size(), sent.toString());
            assertEquals("Bash", sent.path("tools").get(0).path("name").asText());
            r = h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\",\"tools\":[{\"type\":\"image_generation\"}],\"tool_choice\":{\"type\":\"image_generation\"}}");
            assertEquals(200, r.statusCode(), r.body());
            assertFalse(h.stub.last("/responses").json().has("tools"));
            assertFalse(h.stub.last("/responses").json().has("tool_choice"));
        }

        @Test
        void aCyberPolicyFailureIsRetriedOnceAndASecondOneReported() throws Exception {
            h.stub.cyberPolicyFailures(1);
            HttpResponse<String> r = h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\"}");
            assertEquals(200, r.statusCode(), r.body());
            assertEquals(2, h.stub.count("/responses"));
            h.stub.clear();
            h.stub.cyberPolicyFailures(1);
            r = h.post("/v1/chat/completions", "{\"model\":\"gpt-5.1-codex\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
            assertEquals(200, r.statusCode(), r.body());
            assertTrue(r.body().contains("[DONE]"), r.body());
            assertEquals(2, h.stub.count("/responses"), "a stream is retried too");
            h.stub.clear();
            h.stub.cyberPolicyFailures(2);
            r = h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\"}");
            assertEquals(400, r.statusCode(), r.body());
            assertEquals("cyber_policy", json(r.body()).path("error").path("code").asText(), r.body());
            assertEquals(2, h.stub.count("/responses"), "one retry, no more");
            assertEquals(200, h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\"}").statusCode(), "the next one is served");
        }

        @Test
        void aResponseThatFailedUnderCyberPolicyIsAskedOnceMore() throws Exception {
            String codex = "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\"}";
            h.stub.cyberPolicyFailedResponses(1);
            HttpResponse<String> r = h.post("/v1/responses", codex);
            assertEquals(200, r.statusCode(), r.body());
            assertEquals("completed", json(r.body()).path("status").asText(), r.body());
            assertEquals(2, h.stub.count("/responses"));
            h.stub.clear();
            h.stub.cyberPolicyFailedResponses(1);
            r = h.post("/v1/responses", codex.replace("{", "{\"stream\":true,"));
            var ev = ResponsesRouteTests.events(r.body());
            List<String> names = ev.stream().map(Map.Entry::getKey).toList();
            assertEquals("response.completed", names.get(names.size() - 1), r.body());
            assertEquals(1, names.stream().filter(n -> n.equals("response.created")).count(), "the failed attempt is not shown: " + names);
            for (int i = 0; i < ev.size(); i++) assertEquals(i, ev.get(i).getValue().path("sequence_number").asInt());
            assertEquals(2, h.stub.count("/responses"));
            h.stub.clear();
            h.stub.cyberPolicyFailedResponses(1);
            r = h.post("/v1/messages", "{\"model\":\"gpt-5.1-codex\",\"max_tokens\":100,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
            assertTrue(r.body().contains("event: message_stop"), r.body());
            assertFalse(r.body().contains("event: error"), r.body());
            assertEquals(2, h.stub.count("/responses"), "the chat pivot retries too");
            h.stub.clear();
            h.stub.cyberPolicyFailedResponses(2);
            r = h.post("/v1/responses", codex.replace("{", "{\"stream\":true,"));
            names = ResponsesRouteTests.events(r.body()).stream().map(Map.Entry::getKey).toList();
            assertEquals("response.failed", names.get(names.size() - 1), "a second failure reaches the client: " + names);
            assertEquals(2, h.stub.count("/responses"));
            assertEquals(200, h.post("/v1/responses", codex).statusCode(), "the next one is served");
        }

        @Test
        void aBodyOverCopilotsCapIsA413InTheCallersShapeBeforeAnyCall() throws Exception {
            String big = "x".repeat(StubUpstream.RESPONSES_CAP);
            HttpResponse<String> r = h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"" + big + "\"}");
            assertEquals(413, r.statusCode(), r.body().length() > 500 ? r.body().substring(0, 500) : r.body());
            JsonNode error = json(r.body()).path("error");
            assertEquals("request_too_large", error.path("code").asText(), r.body());
            assertTrue(error.path("message").asText().contains("5 MiB"), r.body());
            r = h.post("/v1/messages", "{\"model\":\"gpt-5.1-codex\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":\"" + big + "\"}]}");
            assertEquals(413, r.statusCode());
            assertEquals("request_too_large", json(r.body()).path("error").path("type").asText(), "Anthropic's shape: " + r.body());
            r = h.post("/v1/chat/completions", "{\"model\":\"gpt-5.1-codex\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"" + big + "\"}]}");
            assertEquals(413, r.statusCode());
            assertEquals(0, h.stub.count("/responses"), "refused before Copilot");
            assertEquals(200, h.post("/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\"}").statusCode(), "the next one is served");
        }
    }

    static final class ClaudeCodeSetupTests {
        static final Map<String, String> ENV = CopilotApi.ClaudeCodeSetup.env("http://127.0.0.1:4141", "copilot-api",
            new CopilotApi.ClaudeCodeSetup.Choice("claude-sonnet-4.5", "claude-haiku-4.5"));

        @Test
        void everyVariableClaudeCodeReads() {
            assertEquals(List.of("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_SMALL_FAST_MODEL",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), new ArrayList<>(ENV.keySet()));
            assertEquals("claude-haiku-4.5", ENV.get("ANTHROPIC_SMALL_FAST_MODEL"));
        }

        @Test
        void commandPerShell() {
            String posix = CopilotApi.ClaudeCodeSetup.command(ENV, CopilotApi.ClaudeCodeSetup.Shell.POSIX);
            assertTrue(posix.startsWith("ANTHROPIC_BASE_URL=http://127.0.0.1:4141 ANTHROPIC_AUTH_TOKEN=copilot-api ") && posix.endsWith(" claude"), posix);
            assertTrue(CopilotApi.ClaudeCodeSetup.command(ENV, CopilotApi.ClaudeCodeSetup.Shell.FISH).startsWith("env ANTHROPIC_BASE_URL="));
            String ps = CopilotApi.ClaudeCodeSetup.command(ENV, CopilotApi.ClaudeCodeSetup.Shell.POWERSHELL);
            assertTrue(ps.startsWith("$env:ANTHROPIC_BASE_URL = 'http://127.0.0.1:4141'; ") && ps.endsWith("; claude"), ps);
            String cmd = CopilotApi.ClaudeCodeSetup.command(ENV, CopilotApi.ClaudeCodeSetup.Shell.CMD);
            assertTrue(cmd.startsWith("set \"ANTHROPIC_BASE_URL=http://127.0.0.1:4141\" && ") && cmd.endsWith("&& claude"), cmd);
            assertEquals("'it'\\''s'", CopilotApi.ClaudeCodeSetup.posixQuote("it's"));
            assertEquals(CopilotApi.ClaudeCodeSetup.Shell.FISH, CopilotApi.ClaudeCodeSetup.Shell.detect(null, Map.of("SHELL", "/usr/bin/fish"), "Linux"));
            assertEquals(CopilotApi.ClaudeCodeSetup.Shell.POSIX, CopilotApi.ClaudeCodeSetup.Shell.detect(null, Map.of("SHELL", "/bin/zsh"), "Linux"));
            assertEquals(CopilotApi.ClaudeCodeSetup.Shell.POWERSHELL, CopilotApi.ClaudeCodeSetup.Shell.detect(null, Map.of("PSModulePath", "x"), "Windows 11"));
            assertEquals(CopilotApi.ClaudeCodeSetup.Shell.CMD, CopilotApi.ClaudeCodeSetup.Shell.detect(null, Map.of(), "Windows 11"));
        }

        /** The whole flow from the command line: start --claude-code with both models given prints the command. */
        @Test
        void startPrintsTheCommand() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Map<String, String> env = CliTests.env(stub, Files.createTempDirectory("h"));
                try (CliTests.Started server = new CliTests.Started(env, "--claude-code", "--claude-code-model", "claude-sonnet-4.5",
                        "--claude-code-small-model", "claude-haiku-4.5", "--shell", "posix", "--api-key", "cc-key")) {
                    String command = server.lineWith("ANTHROPIC_BASE_URL=");
                    assertNotNull(command, server.log.toString());
                    assertTrue(command.matches("ANTHROPIC_BASE_URL=http://127\\.0\\.0\\.1:\\d+ .*ANTHROPIC_MODEL=claude-sonnet-4\\.5 .*claude"), command);
                    assertTrue(command.contains(" ANTHROPIC_AUTH_TOKEN=cc-key "), "the API key is Claude Code's token: " + command);
                }
                CliTests.Run bad = CliTests.cli(env, "start", "--port", "0", "--github-token", StubUpstream.VALID_GITHUB_TOKEN,
                    "--claude-code", "--claude-code-model", "nope", "--claude-code-small-model", "claude-haiku-4.5");
                assertEquals(1, bad.exit());
                assertTrue(bad.err().contains("unknown model 'nope'"), bad.err());
                assertFalse(bad.out().contains("listening on"), "refused before the server listens: " + bad.out());
            }
        }
    }

    /** `copilot-api setup CLIENT`, run as its own process against the stub's catalog, in a temporary home. */
    static final class SetupTests {
        record Home(Path dir, Map<String, String> env) {}

        static Home home(StubUpstream stub) throws IOException {
            Path dir = Files.createTempDirectory("setup-home");
            Map<String, String> env = CliTests.env(stub, Files.createDirectories(dir.resolve("data")));
            env.put("HOME", dir.toString());
            env.put("SHELL", "/bin/bash");
            env.put("COPILOT_API_GITHUB_TOKEN", StubUpstream.VALID_GITHUB_TOKEN);
            env.remove("CLAUDE_CONFIG_DIR");
            env.remove("CODEX_HOME");
            return new Home(dir, env);
        }

        static CliTests.Run setup(Home home, String... args) throws Exception {
            List<String> all = new ArrayList<>(List.of("setup"));
            all.addAll(List.of(args));
            CliTests.Run r = CliTests.cli(home.env(), all.toArray(String[]::new));
            System.out.print(r.out() + r.err());
            return r;
        }

        static List<Path> backups(Path dir) throws IOException {
            try (Stream<Path> files = Files.list(dir)) {
                return files.filter(p -> p.getFileName().toString().endsWith(".bak")).toList();
            }
        }

        @Test
        void claudeCodePrintsItsEnvironmentAndLaunchWithModelsFromTheCatalog() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                CliTests.Run r = setup(home, "claude-code", "--port", "5151", "--api-key", "k-1");
                assertEquals(0, r.exit(), r.err());
                assertTrue(r.out().contains("export ANTHROPIC_BASE_URL=http://127.0.0.1:5151\n"), r.out());
                assertTrue(r.out().contains("export ANTHROPIC_AUTH_TOKEN=k-1\n"), r.out());
                assertTrue(r.out().contains("export ANTHROPIC_MODEL=claude-sonnet-4.5\n"), "the newest sonnet by default: " + r.out());
                assertTrue(r.out().contains("export ANTHROPIC_SMALL_FAST_MODEL=gpt-4.1\n"), "a free small model by default: " + r.out());
                assertTrue(r.out().strip().endsWith(" claude"), r.out());
                CliTests.Run fish = setup(home, "claude-code", "--shell", "fish", "--model", "gpt-4.1", "--small-model", "gpt-4o");
                assertTrue(fish.out().contains("set -gx ANTHROPIC_MODEL gpt-4.1\n") && fish.out().contains("set -gx ANTHROPIC_SMALL_FAST_MODEL gpt-4o\n"), fish.out());
                JsonNode json = json(setup(home, "claude-code", "--json", "--url", "http://127.0.0.1:8080/").out());
                assertEquals("claude-code", json.path("client").asText());
                assertEquals("http://127.0.0.1:8080", json.path("env").path("ANTHROPIC_BASE_URL").asText());
                assertEquals("copilot-api", json.path("env").path("ANTHROPIC_AUTH_TOKEN").asText(), "any token works without a key");
                assertEquals("claude-sonnet-4.5", json.path("model").asText());
                assertEquals("gpt-4.1", json.path("smallModel").asText());
                assertEquals(home.dir().resolve(".claude/settings.json").toString(), json.path("file").path("path").asText());
            }
        }

        @Test
        void codexAndOpenAiPrintTheirSetUp() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                JsonNode codex = json(setup(home, "codex", "--json").out());
                assertEquals("gpt-5.1-codex", codex.path("model").asText(), "Codex gets a codex model: " + codex);
                String profile = codex.path("file").path("content").asText();
                assertTrue(profile.contains("base_url = \"http://127.0.0.1:4141/v1\"\n") && profile.contains("wire_api = \"responses\"\n")
                    && profile.contains("supports_websockets = false\n") && profile.contains("model = \"gpt-5.1-codex\"\n"), profile);
                assertFalse(profile.contains("experimental_bearer_token"), "no key, no token: " + profile);
                assertEquals(home.dir().resolve(".codex/copilot-api.config.toml").toString(), codex.path("file").path("path").asText());
                assertEquals("codex -p copilot-api", codex.path("launch").asText());
                assertTrue(json(setup(home, "codex", "--json", "--api-key", "k-2").out()).path("file").path("content").asText()
                    .contains("experimental_bearer_token = \"k-2\""));
                CliTests.Run openai = setup(home, "openai", "--shell", "powershell", "--model", "gpt-4o");
                assertEquals(0, openai.exit(), openai.err());
                assertTrue(openai.out().contains("$env:OPENAI_BASE_URL = 'http://127.0.0.1:4141/v1'")
                    && openai.out().contains("$env:OPENAI_API_KEY = 'copilot-api'") && openai.out().contains("$env:OPENAI_MODEL = 'gpt-4o'"), openai.out());
                assertEquals("gpt-4.1", json(setup(home, "openai", "--json").out()).path("model").asText(), "a free model by default");
            }
        }

        /** A user's own settings survive; a backup comes first; a second run changes nothing; --remove takes out only our keys. */
        @Test
        void claudeCodeWriteMergesBacksUpIsIdempotentAndRemoves() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                Path claude = Files.createDirectories(home.dir().resolve(".claude"));
                Path settings = claude.resolve("settings.json");
                String original = "{\"theme\": \"dark\", \"env\": {\"MY_TOKEN\": \"mine\", \"ANTHROPIC_MODEL\": \"old-model\"}}\n";
                Files.writeString(settings, original);
                Files.setPosixFilePermissions(settings, java.nio.file.attribute.PosixFilePermissions.fromString("rw-r--r--"));

                CliTests.Run write = setup(home, "claude-code", "--write", "--api-key", "secret-key-1");
                assertEquals(0, write.exit(), write.err());
                JsonNode written = json(Files.readString(settings));
                assertEquals("dark", written.path("theme").asText());
                assertEquals("mine", written.path("env").path("MY_TOKEN").asText(), "the user's own key survives");
                assertEquals("claude-sonnet-4.5", written.path("env").path("ANTHROPIC_MODEL").asText());
                assertEquals("secret-key-1", written.path("env").path("ANTHROPIC_AUTH_TOKEN").asText());
                assertEquals("rw-------", java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(settings)),
                    "a file with an API key is readable by its owner only");
                assertTrue(write.out().contains("- env.ANTHROPIC_MODEL = old-model") && write.out().contains("+ env.ANTHROPIC_MODEL = claude-sonnet-4.5"), write.out());
                assertTrue(write.out().contains("+ env.ANTHROPIC_AUTH_TOKEN = ***"), write.out());
                assertFalse(write.out().contains("secret-key-1"), "the key is not shown: " + write.out());
                assertEquals(1, backups(claude).size(), "one backup");
                assertEquals(original, Files.readString(backups(claude).get(0)), "the backup holds the file as it was");

                String after = Files.readString(settings);
                CliTests.Run again = setup(home, "claude-code", "--write", "--api-key", "secret-key-1");
                assertEquals(0, again.exit(), again.err());
                assertTrue(again.out().contains("nothing changed"), again.out());
                assertEquals(after, Files.readString(settings));
                assertEquals(1, backups(claude).size(), "no backup when nothing changes");

                CliTests.Run remove = setup(home, "claude-code", "--remove");
                assertEquals(0, remove.exit(), remove.err());
                JsonNode removed = json(Files.readString(settings));
                assertEquals("dark", removed.path("theme").asText());
                List<String> left = new ArrayList<>();
                removed.path("env").fieldNames().forEachRemaining(left::add);
                assertEquals(List.of("MY_TOKEN"), left, "only copilot-api's keys went: " + removed);
                assertEquals(2, backups(claude).size());
                assertTrue(setup(home, "claude-code", "--remove").out().contains("nothing changed"));
            }
        }

        @Test
        void claudeCodeProjectSettingsAreWrittenInTheCurrentDirectory() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                Path project = Files.createDirectories(home.dir().resolve("project"));
                ProcessBuilder pb = new ProcessBuilder(CliTests.command("setup", "claude-code", "--write", "--project", "--url", "http://127.0.0.1:9999"))
                    .directory(project.toFile()).redirectErrorStream(true);
                pb.environment().keySet().removeIf(k -> k.startsWith("COPILOT_API_"));
                pb.environment().putAll(home.env());
                Process p = pb.start();
                String out = new String(p.getInputStream().readAllBytes(), UTF_8);
                assertTrue(p.waitFor(60, TimeUnit.SECONDS));
                assertEquals(0, p.exitValue(), out);
                assertEquals("http://127.0.0.1:9999", json(Files.readString(project.resolve(".claude/settings.json"))).path("env").path("ANTHROPIC_BASE_URL").asText());
                assertFalse(Files.exists(home.dir().resolve(".claude")), "the user's settings are untouched");
                assertEquals(2, setup(home, "codex", "--project").exit(), "--project is Claude Code's");
            }
        }

        /** Codex's profile is a file copilot-api owns: written beside config.toml (which stays as it was), and deleted by --remove. */
        @Test
        void codexWriteAddsAProfileFileAndRemoveDeletesIt() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                Path codex = Files.createDirectories(home.dir().resolve("codex-home"));
                home.env().put("CODEX_HOME", codex.toString());
                Files.writeString(codex.resolve("config.toml"), "model = \"o3\"\n");
                CliTests.Run write = setup(home, "codex", "--write", "--api-key", "secret-key-2");
                assertEquals(0, write.exit(), write.err());
                Path profile = codex.resolve("copilot-api.config.toml");
                assertTrue(Files.readString(profile).contains("experimental_bearer_token = \"secret-key-2\""));
                assertEquals("rw-------", java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(profile)));
                assertFalse(write.out().contains("secret-key-2"), write.out());
                assertTrue(setup(home, "codex", "--write", "--api-key", "secret-key-2").out().contains("nothing changed"));
                CliTests.Run remove = setup(home, "codex", "--remove");
                assertEquals(0, remove.exit(), remove.err());
                assertFalse(Files.exists(profile));
                assertEquals("model = \"o3\"\n", Files.readString(codex.resolve("config.toml")));
            }
        }

        /** opencode.json: our provider entry and model merged beside the user's own providers, idempotent, and taken out again. */
        @Test
        void opencodeWriteMergesItsProviderAndRemoveTakesItOut() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                Path dir = Files.createDirectories(home.dir().resolve(".config/opencode"));
                Path config = dir.resolve("opencode.json");
                Files.writeString(config, "{\"theme\": \"tokyonight\", \"provider\": {\"mine\": {\"npm\": \"x\"}}, \"model\": \"mine/m\"}\n");
                CliTests.Run write = setup(home, "opencode", "--write", "--api-key", "secret-key-3", "--port", "5151");
                assertEquals(0, write.exit(), write.err());
                assertFalse(write.out().contains("secret-key-3"), write.out());
                assertTrue(write.out().contains("- model = mine/m") && write.out().contains("+ model = copilot-api/gpt-4.1"), write.out());
                JsonNode written = json(Files.readString(config));
                assertEquals("tokyonight", written.path("theme").asText());
                assertEquals("x", written.path("provider").path("mine").path("npm").asText(), "the user's provider survives");
                JsonNode ours = written.path("provider").path("copilot-api");
                assertEquals("@ai-sdk/openai-compatible", ours.path("npm").asText());
                assertEquals("http://127.0.0.1:5151/v1", ours.path("options").path("baseURL").asText());
                assertEquals("secret-key-3", ours.path("options").path("apiKey").asText());
                assertTrue(ours.path("models").has("gpt-4.1"), ours.toString());
                assertEquals("rw-------", java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(config)));
                assertTrue(setup(home, "opencode", "--write", "--api-key", "secret-key-3", "--port", "5151").out().contains("nothing changed"));
                assertEquals(1, backups(dir).size());
                CliTests.Run remove = setup(home, "opencode", "--remove");
                assertEquals(0, remove.exit(), remove.err());
                JsonNode removed = json(Files.readString(config));
                assertFalse(removed.path("provider").has("copilot-api"), removed.toString());
                assertTrue(removed.path("provider").has("mine") && removed.path("theme").asText().equals("tokyonight"), removed.toString());
                assertFalse(removed.has("model"), "our model went with our provider: " + removed);
                Files.delete(config);
                assertEquals(0, setup(home, "opencode", "--write").exit());
                assertEquals("https://opencode.ai/config.json", json(Files.readString(config)).path("$schema").asText(), "a new file names the schema");
                assertEquals(0, setup(home, "opencode", "--remove").exit());
                assertFalse(Files.exists(config), "a file setup created is deleted by --remove");
            }
        }

        /**
         * Gemini CLI: the environment (base URL without a version, the key), and settings.json choosing API-key auth
         * (the gateway auth that the base URL alone selects exits 41 headless), the model, and a compression threshold
         * that is the model's prompt window as a fraction of the 1M tokens the CLI assumes.
         */
        @Test
        void geminiCliPrintsItsEnvironmentAndSettings() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                CliTests.Run r = setup(home, "gemini-cli", "--port", "5151", "--api-key", "k-4");
                assertEquals(0, r.exit(), r.err());
                assertTrue(r.out().contains("export GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:5151\n"), r.out());
                assertTrue(r.out().contains("export GEMINI_API_KEY=k-4\n"), r.out());
                assertTrue(r.out().contains("\"selectedType\" : \"gemini-api-key\""), r.out());
                assertTrue(r.out().strip().endsWith("gemini"), r.out());
                JsonNode json = json(setup(home, "gemini-cli", "--json").out());
                assertEquals("gemini-cli", json.path("client").asText());
                assertEquals("gemini-2.5-pro", json.path("model").asText(), "the catalog's Gemini by default: " + json);
                assertEquals("http://127.0.0.1:4141", json.path("env").path("GOOGLE_GEMINI_BASE_URL").asText());
                assertEquals("copilot-api", json.path("env").path("GEMINI_API_KEY").asText());
                assertEquals(home.dir().resolve(".gemini/settings.json").toString(), json.path("file").path("path").asText());
                assertEquals(home.dir().resolve(".gemini/.env").toString(), json.path("envFile").asText());
                JsonNode settings = json(json.path("file").path("content").asText());
                assertEquals("gemini-api-key", settings.path("security").path("auth").path("selectedType").asText());
                assertEquals("gemini-2.5-pro", settings.path("model").path("name").asText());
                assertEquals(0.082, settings.path("model").path("compressionThreshold").asDouble(), 1e-9,
                    "80% of gemini-2.5-pro's 108,608 prompt tokens, over 1,048,576: " + settings);
                assertEquals(0.097, json(json(setup(home, "gemini-cli", "--json", "--model", "gpt-4.1").out()).path("file").path("content").asText())
                    .path("model").path("compressionThreshold").asDouble(), 1e-9, "gpt-4.1 has 128,000");
                home.env().put("GEMINI_CLI_HOME", home.dir().resolve("elsewhere").toString());
                assertEquals(home.dir().resolve("elsewhere/.gemini/settings.json").toString(),
                    json(setup(home, "gemini-cli", "--json").out()).path("file").path("path").asText(), "GEMINI_CLI_HOME moves ~/.gemini");
            }
        }

        /** settings.json and .env: only our keys merged beside the user's, a backup of each, idempotent, the key in a file only its owner reads, and --remove. */
        @Test
        void geminiCliWriteMergesSettingsAndEnvFileAndRemoveTakesThemOut() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                Path dir = Files.createDirectories(home.dir().resolve(".gemini"));
                Path settings = dir.resolve("settings.json");
                Path envFile = dir.resolve(".env");
                Files.writeString(settings, "{\"ui\": {\"theme\": \"GitHub\"}, \"security\": {\"auth\": {\"selectedType\": \"oauth-personal\"},"
                    + " \"folderTrust\": {\"enabled\": true}}, \"model\": {\"name\": \"gemini-2.5-flash\", \"maxSessionTurns\": 10}}\n");
                Files.writeString(envFile, "# mine\nMY_VAR=1\nGEMINI_API_KEY=old-key\n");
                Files.setPosixFilePermissions(envFile, java.nio.file.attribute.PosixFilePermissions.fromString("rw-r--r--"));

                CliTests.Run write = setup(home, "gemini-cli", "--write", "--api-key", "secret-key-5", "--port", "5151");
                assertEquals(0, write.exit(), write.err());
                assertFalse(write.out().contains("secret-key-5") || write.out().contains("old-key"), "no key is shown: " + write.out());
                assertTrue(write.out().contains("- security.auth.selectedType = oauth-personal")
                    && write.out().contains("+ security.auth.selectedType = gemini-api-key"), write.out());
                assertTrue(write.out().contains("- GEMINI_API_KEY = ***") && write.out().contains("+ GEMINI_API_KEY = ***"), write.out());
                assertTrue(write.out().contains("+ GOOGLE_GEMINI_BASE_URL = http://127.0.0.1:5151"), write.out());
                JsonNode written = json(Files.readString(settings));
                assertEquals("GitHub", written.path("ui").path("theme").asText());
                assertTrue(written.path("security").path("folderTrust").path("enabled").asBoolean(), written.toString());
                assertEquals(10, written.path("model").path("maxSessionTurns").asInt(), "the user's own model settings survive");
                assertEquals("gemini-api-key", written.path("security").path("auth").path("selectedType").asText());
                assertEquals("gemini-2.5-pro", written.path("model").path("name").asText());
                assertEquals(List.of("# mine", "MY_VAR=1", "GEMINI_API_KEY=secret-key-5", "GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:5151"),
                    Files.readAllLines(envFile), "our keys replace the old line in place, the rest stays");
                assertEquals("rw-------", java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(envFile)),
                    "the file with the key is readable by its owner only");
                assertEquals(2, backups(dir).size(), "one backup of each file");

                String settingsAfter = Files.readString(settings);
                String envAfter = Files.readString(envFile);
                CliTests.Run again = setup(home, "gemini-cli", "--write", "--api-key", "secret-key-5", "--port", "5151");
                assertEquals(0, again.exit(), again.err());
                assertEquals(2, again.out().split("nothing changed", -1).length - 1, again.out());
                assertEquals(settingsAfter, Files.readString(settings));
                assertEquals(envAfter, Files.readString(envFile));
                assertEquals(2, backups(dir).size(), "no backup when nothing changes");

                CliTests.Run remove = setup(home, "gemini-cli", "--remove");
                assertEquals(0, remove.exit(), remove.err());
                JsonNode removed = json(Files.readString(settings));
                assertEquals("GitHub", removed.path("ui").path("theme").asText());
                assertFalse(removed.path("security").has("auth"), removed.toString());
                List<String> modelKeys = new ArrayList<>();
                removed.path("model").fieldNames().forEachRemaining(modelKeys::add);
                assertEquals(List.of("maxSessionTurns"), modelKeys, "only copilot-api's keys went: " + removed);
                assertEquals(List.of("# mine", "MY_VAR=1"), Files.readAllLines(envFile));
                assertEquals(2, setup(home, "gemini-cli", "--remove").out().split("nothing changed", -1).length - 1);

                Files.delete(settings);
                Files.delete(envFile);
                assertEquals(0, setup(home, "gemini-cli", "--write", "--model", "gpt-4.1").exit());
                assertEquals(0, setup(home, "gemini-cli", "--remove").exit());
                assertFalse(Files.exists(settings) || Files.exists(envFile), "files setup created are deleted by --remove");
            }
        }

        /**
         * The README's container command line, run outside a container (none runs here): GH_TOKEN from the environment,
         * the data directory elsewhere, --host 0.0.0.0; a client of the published 127.0.0.1:4141 (or localhost:4141)
         * sends that Host, which the Host check accepts; setup takes that address.
         */
        @Test
        void theContainerCommandLineServesWhatAPublishedPortSends() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Map<String, String> env = new HashMap<>(stub.env());
                env.put("GH_TOKEN", StubUpstream.VALID_GITHUB_TOKEN);
                env.put("COPILOT_API_HOME", Files.createTempDirectory("data").toString());
                try (CliTests.Started server = new CliTests.Started(env, List.of("start", "--host", "0.0.0.0", "--port", "0"))) {
                    String base = server.baseUrl();
                    int port = Integer.parseInt(base.substring(base.lastIndexOf(':') + 1));
                    for (String host : List.of("127.0.0.1:4141", "localhost:4141")) {
                        try (java.net.Socket s = new java.net.Socket("127.0.0.1", port)) {
                            s.setSoTimeout(10_000);
                            s.getOutputStream().write(("GET /v1/models HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n").getBytes(UTF_8));
                            String answer = new String(s.getInputStream().readAllBytes(), UTF_8);
                            assertTrue(answer.startsWith("HTTP/1.1 200 ") && answer.contains("\"gpt-4.1\""), host + ": " + answer);
                        }
                    }
                }
                Home home = home(stub);
                JsonNode plan = json(setup(home, "claude-code", "--json", "--url", "http://127.0.0.1:4141").out());
                assertEquals("http://127.0.0.1:4141", plan.path("env").path("ANTHROPIC_BASE_URL").asText());
            }
        }

        /** The service starts java with the options the script header gives JBang, so both run the same JVM. */
        @Test
        void theServiceUsesTheHeadersJvmOptions() throws Exception {
            String header = Files.readAllLines(SdkRunner.repo().resolve("copilot-api.java")).stream()
                .filter(l -> l.startsWith("//JAVA_OPTIONS ")).findFirst().orElseThrow();
            assertEquals(header.substring("//JAVA_OPTIONS ".length()).strip(), String.join(" ", CopilotApi.Service.JVM_OPTIONS));
            assertEquals("a \"b c\" \"100%%\" \"$$HOME\"", CopilotApi.Service.Systemd.execLine(List.of("a", "b c", "100%", "$HOME")));
            assertEquals(4242, CopilotApi.Service.port("ExecStart=/java -jar x.jar start --host 0.0.0.0 --port 4242\n"));
            assertEquals(4141, CopilotApi.Service.port("ExecStart=/java -jar x.jar start\n"));
        }

        @Test
        void badInputIsAOneLineError() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Home home = home(stub);
                CliTests.Run unknown = setup(home, "cursor");
                assertEquals(2, unknown.exit());
                assertTrue(unknown.err().contains("setup knows claude-code, codex, opencode, openai and gemini-cli, not 'cursor'"), unknown.err());
                CliTests.Run openaiWrite = setup(home, "openai", "--write");
                assertEquals(2, openaiWrite.exit());
                assertTrue(openaiWrite.err().contains("openai has no configuration file"), openaiWrite.err());
                assertEquals(2, setup(home, "openai", "--url", "http://127.0.0.1:4141/v1").exit(), "a base URL has no path");
                assertEquals(2, setup(home, "codex", "--small-model", "gpt-4.1").exit());
                assertEquals(2, setup(home, "gemini-cli", "--project").exit(), "Gemini CLI's project settings are not written");
                CliTests.Run badModel = setup(home, "codex", "--model", "nope");
                assertEquals(1, badModel.exit());
                assertTrue(badModel.err().contains("unknown model 'nope'"), badModel.err());
                Files.writeString(Files.createDirectories(home.dir().resolve(".claude")).resolve("settings.json"), "{not json");
                CliTests.Run broken = setup(home, "claude-code", "--write");
                assertEquals(1, broken.exit());
                assertTrue(broken.err().contains("is not a JSON object; fix it by hand, nothing was changed"), broken.err());
                assertEquals("{not json", Files.readString(home.dir().resolve(".claude/settings.json")));
                home.env().remove("COPILOT_API_GITHUB_TOKEN");
                CliTests.Run loggedOut = setup(home, "claude-code");
                assertEquals(1, loggedOut.exit());
                assertTrue(loggedOut.err().contains("not logged in"), loggedOut.err());
                assertEquals(0, setup(home, "codex", "--model", "gpt-5.1-codex").exit(), "with the model given, no login is needed");
            }
        }
    }

    // ==== The Responses API ====

    static final class ResponsesRouteTests extends WithHarness {
        static final String CODEX = "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\",\"reasoning\":{\"effort\":\"low\"}}";

        static List<Map.Entry<String, JsonNode>> events(String sse) {
            return AnthropicNativeTests.events(sse);
        }

        /**
         * Codex with supports_websockets = true opens GET /v1/responses with a WebSocket upgrade first: a 426 makes it fall
         * back to HTTP at once; a browser's upgrade is refused like any browser request; the next POST is served.
         */
        @Test
        void aWebSocketUpgradeIsAnswered426AndABrowserOneRefused() throws Exception {
            String upgrade = "GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
            String answer = h.raw(upgrade + "Connection: close\r\n\r\n");
            assertTrue(answer.startsWith("HTTP/1.1 426 "), answer);
            String body = answer.substring(answer.indexOf("\r\n\r\n") + 4);
            assertTrue(body.contains("\"error\"") && body.contains("POST /v1/responses"), "an OpenAI-shaped error that says what works: " + body);
            String browser = h.raw(upgrade + "Origin: https://evil.example\r\nConnection: close\r\n\r\n");
            assertTrue(browser.startsWith("HTTP/1.1 403 "), browser);
            assertTrue(h.raw("GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").startsWith("HTTP/1.1 404 "),
                "a plain GET is no route, as before");
            assertEquals(200, h.post("/v1/responses", CODEX).statusCode());
        }

        @Test
        void aResponsesModelIsForwardedWithItsItemsUntouched() throws Exception {
            HttpResponse<String> r = h.post("/v1/responses", CODEX);
            assertEquals(200, r.statusCode(), r.body());
            JsonNode sent = h.stub.last("/responses").json();
            assertFalse(sent.path("store").asBoolean(true));
            assertEquals("reasoning.encrypted_content", sent.path("include").get(0).asText());
            JsonNode answer = json(r.body());
            assertEquals("response", answer.path("object").asText());
            JsonNode reasoning = answer.path("output").get(0);
            assertEquals("reasoning", reasoning.path("type").asText());
            assertEquals(StubUpstream.REASONING_SIGNATURE, reasoning.path("encrypted_content").asText(), "encrypted reasoning kept");
            assertTrue(reasoning.path("id").asText().startsWith("rs_stub"), "item ids kept");
        }

        @Test
        void aResponsesStreamIsRelayedWithNamesAndSequenceNumbers() throws Exception {
            HttpResponse<String> r = h.post("/responses", CODEX.replace("{\"model\"", "{\"stream\":true,\"model\""));
            assertEquals(200, r.statusCode());
            var ev = events(r.body());
            assertEquals("response.created", ev.get(0).getKey());
            assertEquals("response.completed", ev.get(ev.size() - 1).getKey());
            for (int i = 0; i < ev.size(); i++) {
                assertEquals(ev.get(i).getKey(), ev.get(i).getValue().path("type").asText());
                assertEquals(i, ev.get(i).getValue().path("sequence_number").asInt(), "sequence numbers intact");
            }
        }

        @Test
        void aCutResponsesStreamEndsWithAnErrorEvent() throws Exception {
            h.stub.enqueue("/responses", StubUpstream.Reply.events(List.of(
                "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[]}}\n\n")));
            HttpResponse<String> r = h.post("/v1/responses", CODEX.replace("{\"model\"", "{\"stream\":true,\"model\""));
            var ev = events(r.body());
            assertEquals("error", ev.get(ev.size() - 1).getKey(), r.body());
            assertEquals(1, ev.get(ev.size() - 1).getValue().path("sequence_number").asInt());
        }

        @Test
        void aChatModelAnswersTheResponsesApiThroughTheTranslator() throws Exception {
            String body = "{\"model\":\"claude-sonnet-4.5\",\"stream\":true,\"instructions\":\"be brief\",\"input\":[{\"role\":\"user\","
                + "\"content\":[{\"type\":\"input_text\",\"text\":\"ls\"}]}],\"tools\":[{\"type\":\"function\",\"name\":\"Bash\",\"parameters\":{\"type\":\"object\"}}]}";
            HttpResponse<String> r = h.post("/v1/responses", body);
            assertEquals(200, r.statusCode(), r.body());
            JsonNode chat = h.stub.last("/chat/completions").json();
            assertEquals("system", chat.path("messages").get(0).path("role").asText());
            assertEquals("Bash", chat.path("tools").get(0).path("function").path("name").asText());
            var ev = events(r.body());
            List<String> names = ev.stream().map(Map.Entry::getKey).toList();
            assertEquals("response.created", names.get(0));
            assertEquals("response.in_progress", names.get(1));
            assertEquals("response.completed", names.get(names.size() - 1));
            assertTrue(names.contains("response.function_call_arguments.done"), names.toString());
            JsonNode done = ev.get(ev.size() - 1).getValue().path("response");
            JsonNode call = null;
            for (JsonNode item : done.path("output")) if (item.path("type").asText().equals("function_call")) call = item;
            assertNotNull(call, done.toString());
            assertEquals("Bash", call.path("name").asText());
            assertFalse(call.path("call_id").asText().isEmpty());
            for (int i = 0; i < ev.size(); i++) assertEquals(i, ev.get(i).getValue().path("sequence_number").asInt());
        }

        /** The current OpenAPI schema: usage.input_tokens_details.cache_write_tokens is required; user is a string or absent. */
        @Test
        void aTranslatedResponseCarriesWhatTheSchemaRequires() throws Exception {
            JsonNode plain = json(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"hi\"}").body());
            assertTrue(plain.path("usage").path("input_tokens_details").path("cache_write_tokens").isIntegralNumber(), plain.toString());
            assertFalse(plain.has("user"), "no user: null: " + plain);
            JsonNode withUser = json(h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"hi\",\"user\":\"u-1\"}").body());
            assertEquals("u-1", withUser.path("user").asText(), withUser.toString());
        }

        @Test
        void unknownStateAndMalformedRequestsAreAnsweredBeforeCopilot() throws Exception {
            HttpResponse<String> r = h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"hi\",\"previous_response_id\":\"resp_1\"}");
            assertEquals(404, r.statusCode());
            assertEquals("previous_response_id", json(r.body()).path("error").path("param").asText(), r.body());
            r = h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":\"hi\",\"conversation\":\"conv_1\"}");
            assertEquals(400, r.statusCode());
            assertEquals("conversation", json(r.body()).path("error").path("param").asText(), r.body());
            r = h.post("/v1/responses", "{\"model\":\"gpt-4.1\"}");
            assertEquals(400, r.statusCode());
            assertEquals("input", json(r.body()).path("error").path("param").asText());
            r = h.post("/v1/responses", "{\"model\":\"nope\",\"input\":\"hi\"}");
            assertEquals(404, r.statusCode());
            assertEquals(0, h.stub.count("/responses") + h.stub.count("/chat/completions"));
        }

        @Test
        void anthropicStreamWithToolUseOnAResponsesOnlyModel() throws Exception {
            String body = "{\"model\":\"gpt-5.1-codex\",\"max_tokens\":1000,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"ls\"}],"
                + "\"tools\":[{\"name\":\"Bash\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"command\":{\"type\":\"string\"}}}}]}";
            HttpResponse<String> r = h.post("/v1/messages", body);
            assertEquals(200, r.statusCode(), r.body());
            assertEquals(1, h.stub.count("/responses"));
            var ev = AnthropicNativeTests.events(r.body());
            assertEquals("message_start", ev.get(0).getKey());
            assertEquals("message_stop", ev.get(ev.size() - 1).getKey());
            JsonNode start = ev.stream().filter(e -> e.getKey().equals("content_block_start")
                && e.getValue().path("content_block").path("type").asText().equals("tool_use")).findFirst().orElseThrow().getValue();
            assertEquals("Bash", start.path("content_block").path("name").asText());
            JsonNode delta = ev.stream().filter(e -> e.getKey().equals("message_delta")).findFirst().orElseThrow().getValue();
            assertEquals("tool_use", delta.path("delta").path("stop_reason").asText());
        }
    }

    // ==== Operator controls ====

    static final String CHAT_HI = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    static final String MESSAGES_HI = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":50,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

    static CopilotApi.Operator.Controls controls(CopilotApi.Operator.ApiKeys keys, CopilotApi.Operator.Pacer pacer, CopilotApi.Operator.Approver approver) {
        return new CopilotApi.Operator.Controls(keys, pacer, approver, new CopilotApi.Operator.Stats());
    }

    @TestInstance(TestInstance.Lifecycle.PER_CLASS)
    static final class ApiKeyTests {
        Harness h;

        @BeforeAll
        void up() throws IOException {
            h = new Harness(StubUpstream.start(), controls(new CopilotApi.Operator.ApiKeys(List.of("k-one", "k-two")), CopilotApi.Operator.Pacer.NONE,
                CopilotApi.Operator.Approver.NONE));
        }

        @AfterAll
        void down() {
            h.close();
        }

        @Test
        void missingOrWrongKeysAre401InTheCallersShape() throws Exception {
            for (String[] wrong : new String[][] {{}, {"x-api-key", "k-three"}, {"authorization", "Bearer k-on"}, {"authorization", "k-one"}}) {
                HttpResponse<String> openai = h.send("POST", "/v1/chat/completions", CHAT_HI, wrong);
                assertEquals(401, openai.statusCode());
                assertEquals("invalid_api_key", json(openai.body()).path("error").path("code").asText(), openai.body());
                HttpResponse<String> anthropic = h.send("POST", "/v1/messages", MESSAGES_HI, wrong);
                assertEquals(401, anthropic.statusCode());
                assertEquals("error", json(anthropic.body()).path("type").asText());
                assertEquals("authentication_error", json(anthropic.body()).path("error").path("type").asText());
            }
            for (String path : List.of("/token", "/usage", "/stats", "/v1/models")) {
                assertEquals(401, h.send("GET", path, null).statusCode(), path);
            }
            assertFalse(h.send("GET", "/token", null).body().contains(h.tokens.current().token()));
        }

        @Test
        void eitherHeaderWithAnyConfiguredKeyWorks() throws Exception {
            assertEquals(200, h.send("POST", "/v1/chat/completions", CHAT_HI, "x-api-key", "k-one").statusCode());
            assertEquals(200, h.send("POST", "/v1/chat/completions", CHAT_HI, "authorization", "Bearer k-two").statusCode());
            assertEquals(200, h.send("POST", "/v1/messages", MESSAGES_HI, "x-api-key", "k-two").statusCode());
            assertEquals(200, h.send("GET", "/token", null, "x-api-key", "k-one").statusCode());
        }

        @Test
        void theDashboardPageItselfIsOpen() throws Exception {
            HttpResponse<String> page = h.send("GET", "/dashboard", null);
            assertEquals(200, page.statusCode());
            assertTrue(page.body().contains("<title>copilot-api</title>"));
            assertEquals(200, h.send("GET", "/", null, "accept", "text/html").statusCode());
        }

        @Test
        void comparisonIsExactForEveryKey() {
            var keys = new CopilotApi.Operator.ApiKeys(List.of("alpha", "beta"));
            assertTrue(keys.accepts("alpha"));
            assertTrue(keys.accepts("beta"));
            for (String no : new String[] {null, "", "alph", "alphaa", "ALPHA", "beta "}) assertFalse(keys.accepts(no), no);
            var env = CopilotApi.Operator.ApiKeys.from(List.of("c"), Map.of("COPILOT_API_KEYS", "a, b"));
            assertTrue(env.accepts("a") && env.accepts("b") && env.accepts("c"));
            assertFalse(CopilotApi.Operator.ApiKeys.from(null, Map.of()).enabled());
        }
    }

    static final class PacingTests {
        @Test
        void withoutWaitASecondQuickRequestIs429WithRetryAfter() throws Exception {
            try (Harness h = new Harness(StubUpstream.start(), controls(CopilotApi.Operator.ApiKeys.NONE,
                    new CopilotApi.Operator.Pacer(Duration.ofSeconds(30), false), CopilotApi.Operator.Approver.NONE))) {
                assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
                HttpResponse<String> second = h.post("/v1/chat/completions", CHAT_HI);
                assertEquals(429, second.statusCode());
                int retryAfter = Integer.parseInt(second.headers().firstValue("retry-after").orElse("0"));
                assertTrue(retryAfter >= 25 && retryAfter <= 30, "retry-after " + retryAfter);
                assertEquals("rate_limit_error", json(second.body()).path("error").path("type").asText());
                HttpResponse<String> anthropic = h.post("/v1/messages", MESSAGES_HI);
                assertEquals(429, anthropic.statusCode());
                assertEquals("rate_limit_error", json(anthropic.body()).path("error").path("type").asText());
                assertEquals("error", json(anthropic.body()).path("type").asText());
                assertEquals(200, h.get("/v1/models").statusCode(), "listing models is not paced");
                assertEquals(200, h.post("/v1/messages/count_tokens", MESSAGES_HI).statusCode(), "count_tokens is not paced");
                assertEquals(1, h.stub.count("/chat/completions"), "the refused request never reached Copilot");
            }
        }

        @Test
        void withWaitRequestsQueueFirstComeFirstServed() throws Exception {
            var pacer = new CopilotApi.Operator.Pacer(Duration.ofMillis(300), true);
            int n = 6;
            long[] admitted = new long[n];
            long[] slots = new long[n];
            List<Integer> order = java.util.Collections.synchronizedList(new ArrayList<>());
            List<Thread> threads = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                int id = i;
                Thread t = new Thread(() -> {
                    slots[id] = pacer.admit(CopilotApi.Watch.NONE);
                    admitted[id] = System.nanoTime();
                    order.add(id);
                });
                threads.add(t);
                t.start();
                // the next thread starts only once this one holds its slot (sleeping for it, or already through)
                long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
                while (t.getState() != Thread.State.TIMED_WAITING && t.getState() != Thread.State.TERMINATED && System.nanoTime() < until) {
                    Thread.sleep(1);
                }
            }
            for (Thread t : threads) t.join(10_000);
            assertEquals(List.of(0, 1, 2, 3, 4, 5), order, "arrival order");
            // slots, not wake-up times: a thread woken late by a busy machine must not make the next gap look short
            for (int i = 1; i < n; i++) {
                long gap = slots[i] - slots[i - 1];
                assertTrue(gap >= TimeUnit.MILLISECONDS.toNanos(300), "slot " + i + " came " + gap / 1_000_000 + " ms after the one before");
            }
            for (int i = 0; i < n; i++) assertTrue(admitted[i] >= slots[i], "request " + i + " went before its slot");
        }

        @Test
        void withWaitTheServerDelaysInsteadOfRefusing() throws Exception {
            try (Harness h = new Harness(StubUpstream.start(), controls(CopilotApi.Operator.ApiKeys.NONE,
                    new CopilotApi.Operator.Pacer(Duration.ofSeconds(1), true), CopilotApi.Operator.Approver.NONE))) {
                long start = System.nanoTime();
                assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
                assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
                assertTrue(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start) >= 950);
            }
        }

        /** A queued request whose client leaves never reaches Copilot, is not counted, and gives its slot to the next one. */
        @Test
        void withWaitAClientThatLeavesWhileQueuedIsNeverSent() throws Exception {
            try (Harness h = new Harness(StubUpstream.start(), controls(CopilotApi.Operator.ApiKeys.NONE,
                    new CopilotApi.Operator.Pacer(Duration.ofMillis(1500), true), CopilotApi.Operator.Approver.NONE))) {
                assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
                long start = System.nanoTime();
                // the pacer gives no sign of a queued request: a short pause lets it take its slot
                leaveAfter(h, "/v1/chat/completions", CHAT_HI, () -> sleep(300));
                Thread.sleep(500); // the pacer looks at a waiting client every 200 ms
                assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode(), "the next request is served");
                long waited = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
                assertTrue(waited < 2500, "the next request took the slot the leaver gave up, waited " + waited + " ms");
                Thread.sleep(1800);
                assertEquals(2, h.stub.count("/chat/completions"), "the request whose client left never reached Copilot");
                assertEquals(2, json(h.get("/stats").body()).path("totals").path("requests").asInt(), "nor was it counted as served");
                JsonNode left = eventually(Duration.ofSeconds(5), () -> withStatus(h, 499), java.util.Objects::nonNull);
                assertNotNull(left, "the history keeps the request as one nobody took: " + h.get("/history").body());
                assertTrue(left.path("premium_cost").isNull() && left.path("initiator").isNull(), "nothing billed: " + left);
                assertTrue(left.path("error_message").asText().contains("never sent to Copilot"), left.toString());
            }
        }

        static JsonNode withStatus(Harness h, int status) {
            for (JsonNode row : json(unchecked(() -> h.get("/history")).body()).path("data")) {
                if (row.path("status").asInt() == status) return row;
            }
            return null;
        }
    }

    /** Sends a request on a raw socket, runs whileWaiting, then closes the socket without reading the answer. */
    static void leaveAfter(Harness h, String path, String body, Runnable whileWaiting) throws IOException {
        try (java.net.Socket s = new java.net.Socket("127.0.0.1", h.server.port())) {
            byte[] bytes = body.getBytes(UTF_8);
            s.getOutputStream().write(("POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
                + bytes.length + "\r\n\r\n").getBytes(UTF_8));
            s.getOutputStream().write(bytes);
            s.getOutputStream().flush();
            whileWaiting.run();
        }
    }

    static <T> T unchecked(java.util.concurrent.Callable<T> call) {
        try {
            return call.call();
        } catch (Exception e) {
            throw new AssertionError(e);
        }
    }

    static void sleep(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new AssertionError(e);
        }
    }

    static final class ManualApprovalTests {
        /** Answers from a script, recording what was shown; can be slow to answer. */
        static final class ScriptedTerminal implements CopilotApi.Operator.Approver.Terminal {
            final java.util.Deque<String> answers;
            final List<String> shown = java.util.Collections.synchronizedList(new ArrayList<>());
            final java.util.concurrent.atomic.AtomicInteger asking = new java.util.concurrent.atomic.AtomicInteger();
            volatile int maxAsking;

            ScriptedTerminal(String... answers) {
                this.answers = new java.util.concurrent.ConcurrentLinkedDeque<>(java.util.Arrays.asList(answers));
            }

            @Override
            public void ask(String question) {
                shown.add(question);
                maxAsking = Math.max(maxAsking, asking.incrementAndGet());
            }

            /** The script's next line after a pause; silence is waited out. One question is open until its answer returns. */
            @Override
            public String answer(Duration timeout) throws InterruptedException {
                Thread.sleep(Math.min(100, timeout.toMillis()));
                String a = answers.peek();
                if (a == null || a.equals("<silence>")) {
                    Thread.sleep(timeout.toMillis());
                    return null;
                }
                asking.decrementAndGet();
                return answers.poll();
            }
        }

        @Test
        void yesPassesNoAndSilenceAre403() throws Exception {
            ScriptedTerminal terminal = new ScriptedTerminal("y", "n", "<silence>");
            var approver = new CopilotApi.Operator.Approver(terminal, Duration.ofMillis(500));
            try (Harness h = new Harness(StubUpstream.start(), controls(CopilotApi.Operator.ApiKeys.NONE, CopilotApi.Operator.Pacer.NONE, approver))) {
                assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
                assertTrue(terminal.shown.get(0).contains("POST /v1/chat/completions") && terminal.shown.get(0).contains("model=gpt-4.1")
                    && terminal.shown.get(0).contains("messages=1"), terminal.shown.toString());
                HttpResponse<String> refused = h.post("/v1/messages", MESSAGES_HI);
                assertEquals(403, refused.statusCode());
                assertEquals("permission_error", json(refused.body()).path("error").path("type").asText());
                HttpResponse<String> silent = h.post("/v1/chat/completions", CHAT_HI);
                assertEquals(403, silent.statusCode());
                assertTrue(json(silent.body()).path("error").path("message").asText().contains("no answer"), silent.body());
                assertEquals(1, h.stub.count("/chat/completions") + h.stub.count("/v1/messages"), "only the approved one went upstream");
                assertEquals(200, h.get("/v1/models").statusCode(), "no question for listing models");
                assertEquals(3, terminal.shown.size());
            }
        }

        @Test
        void concurrentRequestsAreAskedOneAtATime() throws Exception {
            ScriptedTerminal terminal = new ScriptedTerminal("y", "yes", "Y");
            var approver = new CopilotApi.Operator.Approver(terminal, Duration.ofSeconds(10));
            try (Harness h = new Harness(StubUpstream.start(), controls(CopilotApi.Operator.ApiKeys.NONE, CopilotApi.Operator.Pacer.NONE, approver))) {
                List<java.util.concurrent.CompletableFuture<HttpResponse<String>>> all = new ArrayList<>();
                for (int i = 0; i < 3; i++) {
                    all.add(h.client.sendAsync(HttpRequest.newBuilder(URI.create(h.url("/v1/chat/completions")))
                        .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(CHAT_HI)).build(), HttpResponse.BodyHandlers.ofString()));
                }
                for (var f : all) assertEquals(200, f.get(20, TimeUnit.SECONDS).statusCode());
                assertEquals(1, terminal.maxAsking, "one question at a time");
                assertEquals(3, terminal.shown.size());
            }
        }

        /** Answers only what the test types, after the question it is typed for; lines typed before a question are dropped. */
        static final class TypedTerminal implements CopilotApi.Operator.Approver.Terminal {
            final java.util.concurrent.BlockingQueue<String> typed = new java.util.concurrent.LinkedBlockingQueue<>();
            final List<String> shown = java.util.Collections.synchronizedList(new ArrayList<>());

            @Override
            public void ask(String question) {
                typed.clear();
                shown.add(question);
            }

            @Override
            public String answer(Duration timeout) throws InterruptedException {
                return typed.poll(timeout.toMillis(), TimeUnit.MILLISECONDS);
            }
        }

        /** A client that leaves while its question is open is not sent even if the operator then says yes; the next one is asked. */
        @Test
        void aClientThatLeavesWhileAwaitingApprovalIsNeverSent() throws Exception {
            TypedTerminal terminal = new TypedTerminal();
            var approver = new CopilotApi.Operator.Approver(terminal, Duration.ofSeconds(20));
            try (Harness h = new Harness(StubUpstream.start(), controls(CopilotApi.Operator.ApiKeys.NONE, CopilotApi.Operator.Pacer.NONE, approver))) {
                leaveAfter(h, "/v1/chat/completions", CHAT_HI,
                    () -> assertEquals(1, unchecked(() -> eventually(Duration.ofSeconds(5), terminal.shown::size, n -> n == 1))));
                Thread.sleep(600);
                terminal.typed.add("y");
                var next = h.client.sendAsync(HttpRequest.newBuilder(URI.create(h.url("/v1/chat/completions")))
                    .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(CHAT_HI)).build(), HttpResponse.BodyHandlers.ofString());
                assertEquals(2, eventually(Duration.ofSeconds(5), terminal.shown::size, n -> n == 2), "the next request is asked");
                terminal.typed.add("y");
                assertEquals(200, next.get(10, TimeUnit.SECONDS).statusCode());
                assertEquals(1, h.stub.count("/chat/completions"), "the request whose client left never reached Copilot");
                assertEquals(1, json(h.get("/stats").body()).path("totals").path("requests").asInt(), "nor was it counted as served");
            }
        }
    }

    static final class StatsTests extends WithHarness {
        @Test
        void modelRequestsTokensErrorsAndLatencyAreCounted() throws Exception {
            assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
            assertEquals(200, h.post("/v1/chat/completions", CHAT_HI.replace("{\"model\"", "{\"stream\":true,\"model\"")).statusCode());
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.json(500, "{\"error\":{\"message\":\"boom\"}}"));
            assertEquals(500, h.post("/v1/chat/completions", CHAT_HI).statusCode());
            assertEquals(200, h.post("/v1/messages", MESSAGES_HI.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\"")).statusCode());
            assertEquals(200, h.get("/v1/models").statusCode());
            JsonNode st = json(h.get("/stats").body());
            JsonNode gpt = null, claude = null;
            for (JsonNode m : st.path("models")) {
                if (m.path("model").asText().equals("gpt-4.1")) gpt = m;
                if (m.path("model").asText().equals("claude-sonnet-4.5")) claude = m;
            }
            assertNotNull(gpt, st.toString());
            assertNotNull(claude, st.toString());
            assertEquals(3, gpt.path("requests").asInt());
            assertEquals(1, gpt.path("errors").asInt());
            assertTrue(gpt.path("input_tokens").asInt() > 0 && gpt.path("output_tokens").asInt() > 0, gpt.toString());
            assertTrue(gpt.path("median_latency_ms").isNumber());
            assertEquals(1, claude.path("requests").asInt());
            assertTrue(claude.path("output_tokens").asInt() > 0, "usage from the native stream: " + claude);
            assertEquals(4, st.path("totals").path("requests").asInt(), "models listing is not a model request");
            assertEquals(1, st.path("totals").path("errors").asInt());
        }
    }

    // ==== What a web page can and cannot do ====

    /** DNS rebinding (a foreign Host), cross-site requests, bodies that are not JSON, and CORS for an allowed origin. */
    static final class BrowserSafetyTests extends WithHarness {
        static final String HI = ChatBehaviourTests.HI;

        String get(String path, String host, String... headers) throws IOException {
            StringBuilder extra = new StringBuilder();
            for (int i = 0; i < headers.length; i += 2) extra.append(headers[i]).append(": ").append(headers[i + 1]).append("\r\n");
            return h.raw("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n" + extra + "Connection: close\r\n\r\n");
        }

        static int status(String raw) {
            return Integer.parseInt(raw.substring(9, 12));
        }

        static JsonNode body(String raw) {
            return json(raw.substring(raw.indexOf("\r\n\r\n") + 4));
        }

        @Test
        void aRebindingHostGetsNeitherTheTokenNorTheModels() throws Exception {
            for (String path : List.of("/token", "/usage", "/v1/models", "/stats", "/dashboard")) {
                String raw = get(path, "evil.example:" + h.server.port());
                assertEquals(403, status(raw), path + ": " + raw);
                assertFalse(raw.contains("tid="), "no token leaks: " + raw);
                assertEquals("host_not_allowed", body(raw).path("error").path("code").asText(), raw);
            }
            String post = h.raw("POST /v1/messages HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\nContent-Length: "
                + ChatBehaviourTests.HI.length() + "\r\nConnection: close\r\n\r\n" + ChatBehaviourTests.HI);
            assertEquals(403, status(post), post);
            assertEquals("permission_error", body(post).path("error").path("type").asText(), "Anthropic shape: " + post);
            assertEquals(0, h.stub.count("/v1/messages") + h.stub.count("/chat/completions"));
        }

        @Test
        void theNamesTheServerWasBoundForAreServed() throws Exception {
            int port = h.server.port();
            for (String host : List.of("localhost:" + port, "127.0.0.1:" + port, "[::1]:" + port, "LOCALHOST.:" + port, "192.168.1.20:" + port)) {
                String raw = get("/token", host);
                assertEquals(200, status(raw), host + ": " + raw);
            }
        }

        @Test
        void allowedHostsAreExactNames() {
            CopilotApi.Serving.BrowserGuard guard = CopilotApi.Serving.BrowserGuard.from("0.0.0.0", List.of("devbox.lan"), List.of(),
                Map.of("COPILOT_API_ALLOWED_HOSTS", "proxy.internal"));
            assertTrue(guard.allowsHost("devbox.lan:4141"));
            assertTrue(guard.allowsHost("proxy.internal"));
            assertTrue(guard.allowsHost("[fe80::1]:4141"), "IPv6 literals are addresses, not names");
            assertFalse(guard.allowsHost("devbox.lan.evil.example:4141"));
            assertFalse(guard.allowsHost("localhost.evil.example"));
            assertFalse(guard.allowsHost("127.0.0.1.nip.io:4141"), "a name that merely looks like an address is a name");
            assertTrue(CopilotApi.Serving.BrowserGuard.from("myhost.local", List.of(), List.of(), Map.of()).allowsHost("myhost.local:4141"),
                "the --host name itself");
        }

        @Test
        void aCrossSiteTextPlainPostNeverReachesCopilot() throws Exception {
            HttpResponse<String> r = h.send("POST", "/v1/chat/completions", HI, "content-type", "text/plain;charset=UTF-8",
                "origin", "https://evil.example", "sec-fetch-site", "cross-site", "sec-fetch-mode", "no-cors");
            assertEquals(403, r.statusCode(), r.body());
            assertEquals("origin_not_allowed", json(r.body()).path("error").path("code").asText());
            assertTrue(json(r.body()).path("error").path("message").asText().contains("--cors-origin https://evil.example"), r.body());
            assertTrue(r.headers().firstValue("access-control-allow-origin").isEmpty(), "no CORS for a foreign origin");
            assertEquals(0, h.stub.count("/chat/completions"));
        }

        @Test
        void bodiesThatAreNotJsonAre415InTheCallersShape() throws Exception {
            for (String type : List.of("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")) {
                HttpResponse<String> r = h.send("POST", "/v1/chat/completions", HI, "content-type", type);
                assertEquals(415, r.statusCode(), type + ": " + r.body());
                assertEquals("invalid_request_error", json(r.body()).path("error").path("type").asText());
                assertTrue(json(r.body()).path("error").path("message").asText().contains("application/json"), r.body());
            }
            HttpResponse<String> anthropic = h.send("POST", "/v1/messages", HI, "content-type", "text/plain");
            assertEquals(415, anthropic.statusCode());
            assertEquals("error", json(anthropic.body()).path("type").asText(), anthropic.body());
            assertEquals("invalid_request_error", json(anthropic.body()).path("error").path("type").asText());
            String input = "{\"model\":\"gpt-4.1\",\"input\":\"hi\"}";
            String none = h.raw("POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + input.length()
                + "\r\nConnection: close\r\n\r\n" + input);
            assertEquals(415, BrowserSafetyTests.status(none), "no content type at all: " + none);
            assertEquals(200, h.send("POST", "/v1/chat/completions", HI, "content-type", "Application/JSON; charset=utf-8").statusCode());
            assertEquals(1, h.stub.count("/chat/completions"), "only the JSON request reached Copilot");
        }

        @Test
        void crossSiteReadsWithoutAnOriginAreRefusedButALinkOpensTheDashboard() throws Exception {
            HttpResponse<String> token = h.send("GET", "/token", null, "sec-fetch-site", "cross-site", "sec-fetch-mode", "no-cors");
            assertEquals(403, token.statusCode(), token.body());
            assertFalse(token.body().contains("tid="));
            HttpResponse<String> sameSite = h.send("GET", "/usage", null, "sec-fetch-site", "same-site", "sec-fetch-mode", "no-cors");
            assertEquals(403, sameSite.statusCode(), "another port of localhost is same-site, still another origin");
            HttpResponse<String> link = h.send("GET", "/dashboard", null, "sec-fetch-site", "cross-site", "sec-fetch-mode", "navigate");
            assertEquals(200, link.statusCode());
            HttpResponse<String> typed = h.send("GET", "/token", null, "sec-fetch-site", "none", "sec-fetch-mode", "navigate");
            assertEquals(200, typed.statusCode(), "a URL typed by the user is not a web page's doing");
        }

        @Test
        void theServersOwnOriginIsServed() throws Exception {
            String own = "http://127.0.0.1:" + h.server.port();
            HttpResponse<String> r = h.send("POST", "/v1/chat/completions", HI, "content-type", "application/json", "origin", own,
                "sec-fetch-site", "same-origin");
            assertEquals(200, r.statusCode(), r.body());
            assertEquals(200, h.send("GET", "/stats", null, "sec-fetch-site", "same-origin").statusCode());
        }

        @Test
        void anAllowedOriginGetsPreflightsAndCorsHeaders() throws Exception {
            String origin = "http://localhost:3000";
            try (Harness cors = new Harness(StubUpstream.start(), Map.of(), o -> { }, CopilotApi.Operator.Controls.none(),
                    CopilotApi.Serving.BrowserGuard.from("127.0.0.1", List.of(), List.of(origin), Map.of()))) {
                HttpResponse<String> pre = cors.send("OPTIONS", "/v1/chat/completions", null, "origin", origin,
                    "access-control-request-method", "POST", "access-control-request-headers", "authorization,content-type,x-stainless-os",
                    "access-control-request-private-network", "true");
                assertEquals(204, pre.statusCode(), pre.body());
                assertEquals(origin, pre.headers().firstValue("access-control-allow-origin").orElse(null));
                assertTrue(pre.headers().firstValue("access-control-allow-methods").orElse("").contains("POST"));
                assertEquals("authorization,content-type,x-stainless-os", pre.headers().firstValue("access-control-allow-headers").orElse(null));
                assertEquals("true", pre.headers().firstValue("access-control-allow-private-network").orElse(null));
                assertEquals(0, cors.stub.count("/chat/completions"), "a preflight calls nothing");
                HttpResponse<String> r = cors.send("POST", "/v1/chat/completions", HI, "content-type", "application/json", "origin", origin,
                    "sec-fetch-site", "same-site");
                assertEquals(200, r.statusCode(), r.body());
                assertEquals(origin, r.headers().firstValue("access-control-allow-origin").orElse(null));
                HttpResponse<String> other = cors.send("OPTIONS", "/v1/chat/completions", null, "origin", "http://localhost:3001",
                    "access-control-request-method", "POST");
                assertEquals(403, other.statusCode(), "another origin's preflight is refused");
                assertTrue(other.headers().firstValue("access-control-allow-origin").isEmpty());
            }
        }

        /**
         * The refusal comes before the body is read, so it is read here on a raw socket while (or instead of)
         * sending: an HTTP client that insists on writing the whole body first sees a broken pipe, not the answer.
         */
        @Test
        void aBodyOver100MbIs413InTheCallersShapeWithoutAnUpstreamCall() throws Exception {
            for (String path : List.of("/v1/chat/completions", "/v1/messages")) {
                String raw = h.raw("POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
                    + 110L * 1024 * 1024 + "\r\n\r\n{\"model\":");
                assertEquals(413, BrowserSafetyTests.status(raw), raw);
                JsonNode err = BrowserSafetyTests.body(raw);
                if (path.contains("messages")) assertEquals("request_too_large", err.path("error").path("type").asText(), raw);
                else assertEquals("request_too_large", err.path("error").path("code").asText(), raw);
            }
            try (java.net.Socket socket = new java.net.Socket("127.0.0.1", h.server.port())) {
                socket.setSoTimeout(30_000);
                var out = socket.getOutputStream();
                out.write(("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    + "Transfer-Encoding: chunked\r\n\r\n").getBytes(UTF_8));
                Thread sender = new Thread(() -> {
                    byte[] chunk = ("100000\r\n" + " ".repeat(0x100000) + "\r\n").getBytes(UTF_8);
                    try {
                        for (int i = 0; i < 110; i++) out.write(chunk);
                    } catch (IOException refusedMidway) {
                        // the server answered and closed while we were still sending: expected
                    }
                });
                sender.start();
                String answer = new String(socket.getInputStream().readAllBytes(), UTF_8);
                sender.join(30_000);
                assertEquals(413, BrowserSafetyTests.status(answer), "a chunked body without Content-Length is measured as it is read: " + answer);
            }
            assertEquals(0, h.stub.count("/chat/completions") + h.stub.count("/v1/messages"));
        }

        /** The attacks as Chromium makes them: a page on another site posting text/plain, and a rebound name reading /token. */
        @Test
        void inABrowserNeitherAttackReachesCopilotOrTheToken() throws Exception {
            org.junit.jupiter.api.Assumptions.assumeTrue(DashboardTests.chromium() != null, "no chromium on PATH (.ci/run installs it)");
            String target = "http://127.0.0.1:" + h.server.port();
            String page = "<!doctype html><title>attack</title><script>fetch('" + target + "/v1/chat/completions', {method: 'POST', mode: 'no-cors',"
                + " headers: {'content-type': 'text/plain'}, body: JSON.stringify({model: 'gpt-4.1', messages: [{role: 'user', content: 'hi'}]})})"
                + ".finally(() => { document.title = 'sent'; });</script>";
            com.sun.net.httpserver.HttpServer attacker = com.sun.net.httpserver.HttpServer.create(new java.net.InetSocketAddress("127.0.0.1", 0), 0);
            attacker.createContext("/", ex -> {
                byte[] b = page.getBytes(UTF_8);
                ex.getResponseHeaders().add("content-type", "text/html");
                ex.sendResponseHeaders(200, b.length);
                ex.getResponseBody().write(b);
                ex.close();
            });
            attacker.start();
            try {
                long before = json(h.get("/stats").body()).path("refused").path("origin_not_allowed").asLong();
                String dom = DashboardTests.render("http://evil.example:" + attacker.getAddress().getPort() + "/",
                    "--host-resolver-rules=MAP evil.example 127.0.0.1");
                assertTrue(dom.contains("<title>sent</title>"), "the page ran its fetch: " + dom);
                assertEquals(before + 1, json(h.get("/stats").body()).path("refused").path("origin_not_allowed").asLong(),
                    "the browser did send the request, and copilot-api refused it");
                assertEquals(0, h.stub.count("/chat/completions"), "and it never reached Copilot");
                String rebound = DashboardTests.render("http://evil.example:" + h.server.port() + "/token",
                    "--host-resolver-rules=MAP evil.example 127.0.0.1");
                assertTrue(rebound.contains("host_not_allowed"), rebound);
                assertFalse(rebound.contains("tid="), rebound);
            } finally {
                attacker.stop(0);
            }
        }
    }

    /** Fields copilot-api reads or rewrites are checked: a 400 in the caller's shape that names the field, no upstream call. */
    static final class InputValidationTests extends WithHarness {
        static void assertRefused(Harness h, String path, String body, String field) throws Exception {
            HttpResponse<String> r = h.post(path, body);
            assertEquals(400, r.statusCode(), path + " " + body + " -> " + r.body());
            JsonNode j = json(r.body());
            String message = path.contains("messages") ? j.path("error").path("message").asText() : j.path("error").path("message").asText();
            if (path.contains("messages")) assertEquals("invalid_request_error", j.path("error").path("type").asText(), r.body());
            else assertEquals(field, j.path("error").path("param").asText(), r.body());
            assertTrue(message.contains(field), "names " + field + ": " + r.body());
        }

        @Test
        void chatFieldsOfTheWrongType() throws Exception {
            String p = "/v1/chat/completions";
            String m = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
            assertRefused(h, p, "{\"model\":\"gpt-4.1\"," + m + ",\"stream\":\"yes\"}", "stream");
            assertRefused(h, p, "{\"model\":\"gpt-4.1\"," + m + ",\"stream\":\"true\"}", "stream");
            assertRefused(h, p, "{\"model\":\"gpt-4.1\"," + m + ",\"tools\":{}}", "tools");
            assertRefused(h, p, "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content");
            assertRefused(h, p, "{\"model\":\"gpt-4.1\",\"messages\":[\"hi\"]}", "messages[0]");
            assertRefused(h, p, "{\"model\":\"gpt-4.1\",\"messages\":[{\"content\":\"hi\"}]}", "messages[0].role");
            assertRefused(h, p, "{\"model\":\"gpt-4.1\"," + m + ",\"max_tokens\":-1}", "max_tokens");
            assertRefused(h, p, "{\"model\":\"gpt-4.1\"," + m + ",\"n\":0}", "n");
            assertEquals(0, h.stub.count("/chat/completions"));
            assertEquals(200, h.post(p, "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
                + "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}],\"stream\":false,\"max_tokens\":null}").statusCode(),
                "null where the API allows it");
        }

        @Test
        void anthropicFieldsOfTheWrongType() throws Exception {
            String p = "/v1/messages";
            String m = "\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
            for (String model : List.of("claude-sonnet-4.5", "gpt-4.1")) {
                assertRefused(h, p, "{\"model\":\"" + model + "\"," + m + ",\"stream\":\"yes\"}", "stream");
                assertRefused(h, p, "{\"model\":\"" + model + "\"," + m + ",\"tools\":{}}", "tools");
                assertRefused(h, p, "{\"model\":\"" + model + "\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":5}]}",
                    "messages[0].content");
                assertRefused(h, p, "{\"model\":\"" + model + "\",\"max_tokens\":100,\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}",
                    "messages[0].content[0]");
                assertRefused(h, p, "{\"model\":\"" + model + "\"," + m + ",\"system\":5}", "system");
                assertRefused(h, p, "{\"model\":\"" + model + "\"," + m + ",\"thinking\":\"on\"}", "thinking");
                assertRefused(h, p, "{\"model\":\"" + model + "\",\"max_tokens\":-1,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                    "max_tokens");
            }
            assertRefused(h, p + "/count_tokens", "{\"model\":\"claude-sonnet-4.5\",\"messages\":[{\"role\":\"user\",\"content\":5}]}",
                "messages[0].content");
            assertEquals(0, h.stub.count("/v1/messages") + h.stub.count("/chat/completions"));
        }

        @Test
        void responsesFieldsOfTheWrongType() throws Exception {
            String p = "/v1/responses";
            for (String model : List.of("gpt-5.1-codex", "gpt-4.1")) {
                assertRefused(h, p, "{\"model\":\"" + model + "\",\"input\":\"hi\",\"stream\":\"true\"}", "stream");
                assertRefused(h, p, "{\"model\":\"" + model + "\",\"input\":\"hi\",\"tools\":{}}", "tools");
                assertRefused(h, p, "{\"model\":\"" + model + "\",\"input\":[5]}", "input[0]");
                assertRefused(h, p, "{\"model\":\"" + model + "\",\"input\":\"hi\",\"max_output_tokens\":0}", "max_output_tokens");
                assertRefused(h, p, "{\"model\":\"" + model + "\",\"input\":\"hi\",\"instructions\":{}}", "instructions");
            }
            assertEquals(0, h.stub.count("/responses") + h.stub.count("/chat/completions"));
        }

        // A number longer than a long, or a time past what a long holds: the caller's mistake (400 naming it), not a 500.
        @Test
        void historyQueriesOutOfRangeAre400sNamingTheParameter() throws Exception {
            String huge = "99999999999999999999";
            for (String q : List.of("since=" + huge, "until=" + huge, "since=%2B1000000000-12-31T23:59:59Z", "until=-5", "before=" + huge,
                    "before=x", "limit=" + huge, "status=" + huge)) {
                HttpResponse<String> r = h.get("/history?" + q);
                assertEquals(400, r.statusCode(), q + " -> " + r.body());
                JsonNode error = json(r.body()).path("error");
                assertEquals("invalid_request_error", error.path("type").asText(), r.body());
                assertEquals(q.substring(0, q.indexOf('=')), error.path("param").asText(), r.body());
            }
            assertEquals(200, h.get("/history?since=0&limit=1").statusCode(), "the next query is served");
        }

        // An input_file whose data URL does not decode (bad base64, a broken percent escape) is a 400 naming input;
        // so is an Anthropic text document whose base64 does not decode.
        @Test
        void responsesInputFileWithADataUrlThatDoesNotDecodeIsA400() throws Exception {
            int calls = h.stub.count("/chat/completions");
            for (String url : List.of("data:text/plain;base64,QQ=Q", "data:text/plain,100%", "data:text/plain,%zz")) {
                assertRefused(h, "/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_file\","
                    + "\"filename\":\"a.txt\",\"file_data\":\"" + url + "\"}]}]}", "input");
            }
            // the same on the Anthropic route to a chat model: a text document whose base64 does not decode
            assertRefused(h, "/v1/messages", "{\"model\":\"gpt-4.1\",\"max_tokens\":50,\"messages\":[{\"role\":\"user\",\"content\":["
                + "{\"type\":\"document\",\"source\":{\"type\":\"base64\",\"media_type\":\"text/plain\",\"data\":\"QQ=Q\"}}]}]}", "base64");
            assertEquals(calls, h.stub.count("/chat/completions"));
            HttpResponse<String> r = h.post("/v1/responses", "{\"model\":\"gpt-4.1\",\"input\":[{\"role\":\"user\",\"content\":[{\"type\":"
                + "\"input_file\",\"filename\":\"a.txt\",\"file_data\":\"data:text/plain,50%25%20off\"}]}]}");
            assertEquals(200, r.statusCode(), r.body());
            assertTrue(h.stub.last("/chat/completions").json().toString().contains("a.txt:\\n50% off"), h.stub.last("/chat/completions").json().toString());
        }
    }

    /** The dashboard as a person sees it: rendered by headless Chromium, quota numbers from the stub. */
    static final class DashboardTests {
        static String chromium() {
            for (String c : List.of("chromium", "chromium-browser", "google-chrome")) {
                if (CopilotApi.Clipboard.onPath(c)) return c;
            }
            return null;
        }

        static String render(String url, String... flags) throws Exception {
            String browser = chromium();
            org.junit.jupiter.api.Assumptions.assumeTrue(browser != null, "no chromium on PATH (.ci/run installs it)");
            Path profile = Files.createTempDirectory("chromium");
            List<String> command = new ArrayList<>(List.of(browser, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--user-data-dir=" + profile, "--virtual-time-budget=5000"));
            command.addAll(List.of(flags));
            command.addAll(List.of("--dump-dom", url));
            try {
                SdkRunner.Result r = SdkRunner.run(profile, Map.of(), Duration.ofSeconds(60), command.toArray(String[]::new));
                assertEquals(0, r.exit(), r.output());
                return r.output();
            } finally {
                deleteTree(profile);
            }
        }

        /** A browser profile is tens of megabytes: gone after each page, not left in the temporary folder. */
        static void deleteTree(Path dir) throws IOException {
            try (Stream<Path> all = Files.walk(dir)) {
                for (Path p : all.sorted(java.util.Comparator.reverseOrder()).toList()) Files.deleteIfExists(p);
            }
        }

        @Test
        void showsPlanQuotasAndStatsBehindAnApiKey() throws Exception {
            try (Harness h = new Harness(StubUpstream.start(), controls(new CopilotApi.Operator.ApiKeys(List.of("dash-key")), CopilotApi.Operator.Pacer.NONE,
                    CopilotApi.Operator.Approver.NONE))) {
                assertEquals(200, h.send("POST", "/v1/chat/completions", CHAT_HI, "x-api-key", "dash-key").statusCode());
                String dom = render(h.url("/dashboard#key=dash-key"));
                assertTrue(dom.contains("120 / 300 used (40.0%)"), "premium quota: " + dom);
                assertTrue(dom.contains("individual · quota resets 2026-12-01"), dom);
                assertTrue(dom.matches("(?s).*<b>Chat</b><span>unlimited</span>.*"), dom);
                assertTrue(dom.contains("<td>gpt-4.1</td><td>1</td><td>0</td>"), "stats row: " + dom);
                String locked = render(h.url("/dashboard"));
                assertTrue(locked.matches("(?s).*<form id=\"keyform\">.*"), "without the key the page asks for it: " + locked);
            }
        }

        // A day of work at phone width: recent requests with their errors, latency, per day and per model, how to connect; after a restart too.
        @Test
        void showsTheHistoryAndHowToConnectAtPhoneWidthAcrossARestart() throws Exception {
            Path home = Files.createTempDirectory("copilot-api-dashboard");
            String today = java.time.LocalDate.now(java.time.ZoneOffset.UTC).toString();
            try (Harness h = StoreTests.harness(home, CopilotApi.Store.Options.DEFAULT)) {
                assertEquals(200, h.post("/v1/chat/completions", CHAT_HI).statusCode());
                assertEquals(404, h.post("/v1/chat/completions", "{\"model\":\"nope\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}").statusCode());
                assertEquals(200, h.post("/v1/messages", MESSAGES_HI).statusCode());
                eventually(Duration.ofSeconds(10), () -> StoreTests.history(h, "").path("data").size(), n -> n >= 3);
                String dom = render(h.url("/dashboard"), "--window-size=390,844");
                String origin = "http://127.0.0.1:" + h.server.port();
                assertTrue(dom.contains("<td>POST /v1/chat/completions</td><td>gpt-4.1</td><td>200</td>"), "a recent request: " + dom);
                assertTrue(dom.matches("(?s).*<td class=\"error\">404</td>.*<td colspan=\"7\" class=\"err\">[a-z_]+: [^<]*not available.*"),
                    "a failed request with its error: " + dom);
                assertTrue(dom.matches("(?s).*p50 [0-9,]+ ms · p95 [0-9,]+ ms.*"), "latency: " + dom);
                assertTrue(dom.contains("<td>" + today + "</td><td>3</td><td>1</td>"), "requests per day: " + dom);
                assertTrue(dom.matches("(?s).*<td>claude-sonnet-4.5</td><td>1</td><td>0</td><td>[0-9,]+ ms</td>.*"), "per model: " + dom);
                assertTrue(dom.contains("<code id=\"openai-url\">" + origin + "/v1</code>"), dom);
                assertTrue(dom.contains("ANTHROPIC_BASE_URL=" + origin + " ANTHROPIC_AUTH_TOKEN=copilot-api ANTHROPIC_MODEL=claude-"), dom);
                assertTrue(dom.matches("(?s).*<dd id=\"token\">valid, renewed before .*"), "the Copilot token's state: " + dom);
                assertTrue(dom.matches("(?s).*<dd id=\"store\">ok · .*store.db · kept 30 days</dd>.*"), dom);
                assertFalse(dom.contains(StubUpstream.VALID_GITHUB_TOKEN), "no token on the page");
            }
            try (Harness h = StoreTests.harness(home, CopilotApi.Store.Options.DEFAULT)) {
                String dom = render(h.url("/dashboard"), "--window-size=390,844");
                assertTrue(dom.contains("<td>POST /v1/chat/completions</td><td>nope</td><td class=\"error\">404</td>"), "after a restart: " + dom);
            }
        }
    }

    /** SIGTERM while a stream runs: the stream finishes, then the process exits 0. */
    static final class GracefulStopTests {
        @Test
        void runningStreamsFinishThenExitZero() throws Exception {
            // the server is a resource too: a failing assertion must not leave its process running
            try (StubUpstream stub = StubUpstream.start();
                 CliTests.Started server = new CliTests.Started(CliTests.env(stub, Files.createTempDirectory("h")))) {
                stub.streamDelayMs(400);
                Process p = server.process;
                String base = server.baseUrl();
                HttpClient client = HttpClient.newHttpClient();
                HttpResponse<InputStream> r = client.send(HttpRequest.newBuilder(URI.create(base + "/v1/chat/completions"))
                    .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(CHAT_HI.replace("{\"model\"", "{\"stream\":true,\"model\""))).build(),
                    HttpResponse.BodyHandlers.ofInputStream());
                BufferedReader stream = new BufferedReader(new InputStreamReader(r.body(), UTF_8));
                assertNotNull(stream.readLine());
                p.toHandle().destroy(); // SIGTERM; Process.destroy() would also close our end of its output
                StringBuilder rest = new StringBuilder();
                try {
                    for (String line = stream.readLine(); line != null; line = stream.readLine()) rest.append(line).append('\n');
                } catch (IOException cut) {
                    rest.append("(cut: ").append(cut).append(")\n");
                }
                server.awaitEnd();
                assertTrue(p.waitFor(20, TimeUnit.SECONDS));
                assertTrue(rest.toString().contains("data: [DONE]"), "the running stream finished: " + rest + "\nserver:\n" + server.log);
                assertEquals(0, p.exitValue(), server.log.toString());
                assertTrue(server.log.toString().contains("waiting up to 10s for 1 running request(s)"), server.log.toString());
                final String b = base;
                assertThrows(IOException.class, () -> client.send(HttpRequest.newBuilder(URI.create(b + "/")).build(),
                    HttpResponse.BodyHandlers.ofString()), "no new connections after the stop");
            }
        }
    }

    /** A stream still running after the grace: ended with its API's error event; new connections refused meanwhile. */
    static final class ShutdownTests {
        @Test
        void streamsOutlivingTheGraceEndWithTheirApisErrorEventAndNewConnectionsAreRefused() throws Exception {
            try (Harness h = Harness.start()) {
                h.stub.enqueue("/chat/completions", StubUpstream.Reply.hang(30_000));
                h.stub.enqueue("/v1/messages", StubUpstream.Reply.hang(30_000));
                HttpResponse<InputStream> chat = h.postStreaming("/v1/chat/completions", CHAT_HI.replace("{\"model\"", "{\"stream\":true,\"model\""));
                HttpResponse<InputStream> messages = h.postStreaming("/v1/messages", MESSAGES_HI.replace("{\"model\"", "{\"stream\":true,\"model\""));
                assertEquals(2, eventually(Duration.ofSeconds(5), () -> h.copilot.streams().size(), n -> n == 2));
                int port = h.server.port();
                var stopping = java.util.concurrent.CompletableFuture.supplyAsync(() -> CopilotApi.GracefulStop.stop(h.server, Duration.ofSeconds(2)));
                assertTrue(eventually(Duration.ofSeconds(2), () -> refused(port), r -> r), "new connections are refused during the drain");
                assertFalse(stopping.isDone(), "still draining when the new connection was refused");
                assertEquals(2, stopping.get(20, TimeUnit.SECONDS), "two streams ended at shutdown");
                String chatBody = new String(chat.body().readAllBytes(), UTF_8);
                String messagesBody = new String(messages.body().readAllBytes(), UTF_8);
                assertTrue(chatBody.contains("data: {\"error\":{\"message\":\"copilot-api is shutting down\""), chatBody);
                assertFalse(chatBody.contains("[DONE]"), chatBody);
                assertTrue(messagesBody.contains("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"copilot-api is shutting down\"}}"),
                    messagesBody);
            }
        }

        /** The first Ctrl-C drains; a second one does not wait for the grace period. */
        @Test
        void aSecondCtrlCQuitsAtOnce() throws Exception {
            // asked before a server starts, so that a skip leaves no process behind
            org.junit.jupiter.api.Assumptions.assumeFalse(sigintIgnored(), "SIGINT is ignored in this process tree (a shell without job "
                + "control started the tests in the background), and a JVM keeps ignoring it: Ctrl-C cannot be tested here");
            try (StubUpstream stub = StubUpstream.start();
                 CliTests.Started server = new CliTests.Started(CliTests.env(stub, Files.createTempDirectory("h")))) {
                stub.enqueue("/chat/completions", StubUpstream.Reply.hang(30_000));
                String base = server.baseUrl();
                HttpClient client = HttpClient.newHttpClient();
                HttpResponse<InputStream> stream = client.send(HttpRequest.newBuilder(URI.create(base + "/v1/chat/completions"))
                    .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(streaming(CHAT_HI))).build(),
                    HttpResponse.BodyHandlers.ofInputStream());
                assertEquals(200, stream.statusCode());
                String pid = String.valueOf(server.process.pid());
                new ProcessBuilder("kill", "-INT", pid).start().waitFor();
                assertNotNull(server.lineWith("press Ctrl-C again"), server.log.toString());
                long start = System.nanoTime();
                new ProcessBuilder("kill", "-INT", pid).start().waitFor();
                assertTrue(server.process.waitFor(5, TimeUnit.SECONDS), "the second Ctrl-C ends it: " + server.log);
                assertTrue(System.nanoTime() - start < Duration.ofSeconds(5).toNanos());
                assertEquals(130, server.process.exitValue());
                stream.body().close();
            }
        }

        /** True when this process ignores SIGINT (Linux: bit 2 of SigIgn in /proc/self/status); children inherit that. */
        static boolean sigintIgnored() {
            try {
                for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                    if (line.startsWith("SigIgn:")) return (Long.parseUnsignedLong(line.substring(7).trim(), 16) & (1L << 1)) != 0;
                }
            } catch (IOException | RuntimeException e) {
                // not Linux: assume Ctrl-C reaches the server
            }
            return false;
        }

        static boolean refused(int port) {
            try (java.net.Socket s = new java.net.Socket("127.0.0.1", port)) {
                return false;
            } catch (java.net.ConnectException e) {
                return true;
            } catch (IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }
    }

    /** Limits short enough for tests: first byte and answer 1 s, idle 1 s, early commit 300 ms. */
    static final CopilotApi.Timeouts SHORT = new CopilotApi.Timeouts(Duration.ofSeconds(1), Duration.ofSeconds(1), Duration.ofSeconds(1),
        Duration.ofMillis(300), CopilotApi.Timeouts.DEFAULT.keepAlive());

    static String streaming(String body) {
        return body.replace("{\"model\"", "{\"stream\":true,\"model\"");
    }

    /** A Copilot that does not answer in time: 504 in the API's shape, or the API's error event once the stream has begun. */
    @TestInstance(TestInstance.Lifecycle.PER_CLASS)
    static final class UpstreamTimeoutTests {
        StubUpstream.Silent silent;
        Harness hung;
        Harness slow;

        @BeforeAll
        void up() throws IOException {
            StubUpstream stub = StubUpstream.start();
            silent = new StubUpstream.Silent(stub);
            hung = new Harness(stub, Map.of("COPILOT_API_COPILOT_URL", silent.url()), o -> { }, CopilotApi.Operator.Controls.none(), SHORT);
            slow = new Harness(StubUpstream.start(), Map.of(), o -> { }, CopilotApi.Operator.Controls.none(),
                new CopilotApi.Timeouts(Duration.ofSeconds(10), Duration.ofSeconds(1), Duration.ofSeconds(10), Duration.ofMillis(300), CopilotApi.Timeouts.DEFAULT.keepAlive()));
        }

        @AfterAll
        void down() {
            hung.close();
            slow.close();
            silent.close();
        }

        @Test
        void aSilentCopilotIs504InTheOpenAiShapeAndItsConnectionIsClosed() throws Exception {
            int closed = silent.closedCount();
            HttpResponse<String> r = hung.post("/v1/chat/completions", CHAT_HI);
            assertEquals(504, r.statusCode(), r.body());
            assertEquals("api_error", json(r.body()).path("error").path("type").asText(), r.body());
            assertTrue(json(r.body()).path("error").path("message").asText().contains("No answer from"), r.body());
            assertTrue(silent.awaitClosed(closed + 1, Duration.ofSeconds(5)), "the upstream connection was closed");
        }

        @Test
        void aSilentCopilotIs504InTheAnthropicShape() throws Exception {
            HttpResponse<String> r = hung.post("/v1/messages", MESSAGES_HI);
            assertEquals(504, r.statusCode(), r.body());
            assertEquals("error", json(r.body()).path("type").asText(), r.body());
            assertEquals("timeout_error", json(r.body()).path("error").path("type").asText(), r.body());
        }

        @Test
        void aStreamIsAnsweredAtOnceThenEndsWithAnErrorEventWhenCopilotNeverAnswers() throws Exception {
            HttpResponse<InputStream> r = hung.postStreaming("/v1/chat/completions", streaming(CHAT_HI));
            assertEquals(200, r.statusCode());
            assertTrue(r.headers().firstValue("content-type").orElse("").startsWith("text/event-stream"));
            String body = new String(r.body().readAllBytes(), UTF_8);
            assertTrue(body.startsWith(": waiting for Copilot\n\n"), body);
            JsonNode error = json(dataLines(body).get(0)).path("error");
            assertTrue(error.path("message").asText().startsWith("HTTP 504: No answer from"), body);
            assertFalse(body.contains("[DONE]"), body);
        }

        @Test
        void anAnthropicStreamEndsWithAnErrorEventWhenCopilotNeverAnswers() throws Exception {
            HttpResponse<InputStream> r = hung.postStreaming("/v1/messages", streaming(MESSAGES_HI));
            String body = new String(r.body().readAllBytes(), UTF_8);
            assertEquals(200, r.statusCode(), body);
            assertTrue(body.contains("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"timeout_error\""), body);
            assertFalse(body.contains("message_stop"), body);
        }

        @Test
        void aStreamThatFallsSilentEndsWithAnErrorEventAfterTheIdleLimit() throws Exception {
            slow.stub.enqueue("/chat/completions", StubUpstream.Reply.hang(20_000));
            long start = System.nanoTime();
            HttpResponse<InputStream> r = slow.postStreaming("/v1/chat/completions", streaming(CHAT_HI));
            String body = new String(r.body().readAllBytes(), UTF_8);
            assertTrue(body.contains("no event from Copilot for 1s"), body);
            assertTrue(Duration.ofNanos(System.nanoTime() - start).compareTo(Duration.ofSeconds(15)) < 0, "ended by the idle limit, not the stub");
        }

        @Test
        void anUpstreamErrorAfterTheEarlyCommitBecomesTheApisErrorEvent() throws Exception {
            slow.stub.enqueue("/chat/completions", StubUpstream.Reply.error(429, "rate_limited", "slow down").delayMs(1500));
            HttpResponse<InputStream> r = slow.postStreaming("/v1/chat/completions", streaming(CHAT_HI));
            assertEquals(200, r.statusCode());
            String body = new String(r.body().readAllBytes(), UTF_8);
            assertTrue(body.startsWith(": waiting for Copilot\n\n"), body);
            JsonNode error = json(dataLines(body).get(0)).path("error");
            assertEquals("HTTP 429: slow down", error.path("message").asText(), body);
            assertEquals("rate_limited", error.path("code").asText(), body);
        }

        @Test
        void aQuickUpstreamErrorKeepsItsStatusOnAStream() throws Exception {
            slow.stub.enqueue("/chat/completions", StubUpstream.Reply.error(429, "rate_limited", "slow down").header("retry-after", "7"));
            HttpResponse<String> r = slow.post("/v1/chat/completions", streaming(CHAT_HI));
            assertEquals(429, r.statusCode(), r.body());
            assertEquals("7", r.headers().firstValue("retry-after").orElse(""));
        }

        @Test
        void startListensBeforeTheCatalogArrives() throws Exception {
            try (StubUpstream stub = StubUpstream.start(); StubUpstream.Silent catalogHangs = new StubUpstream.Silent(stub).hangCatalog()) {
                Map<String, String> env = new HashMap<>(CliTests.env(stub, Files.createTempDirectory("h")));
                env.put("COPILOT_API_COPILOT_URL", catalogHangs.url());
                try (CliTests.Started server = new CliTests.Started(env, "--first-byte-timeout", "60")) {
                    String log = eventually(Duration.ofSeconds(30), () -> server.log.toString(), l -> l.contains("listening on http://"));
                    assertTrue(log.contains("listening on http://"), log);
                    // the fetch runs on its own thread, started just before listening: give it a moment to arrive
                    assertEquals(List.of("GET /models"), eventually(Duration.ofSeconds(10), catalogHangs::seen, seen -> !seen.isEmpty()),
                        "the catalog is being fetched meanwhile");
                }
            }
        }
    }

    /**
     * Copilot cuts a stream in the middle: every API's error event tells the person what happened in a short
     * sentence, without the HTTP client's connection dump, and the next request is served.
     */
    static final class StreamBreakTests extends WithHarness {
        /** The message of the stream's error event: Anthropic's and Responses' named events, or OpenAI's error chunk. */
        static String errorMessage(String sse) {
            for (var e : AnthropicNativeTests.events(sse)) {
                JsonNode d = e.getValue();
                if (e.getKey().equals("error")) return d.path("error").path("message").asText(d.path("message").asText());
                if (e.getKey().equals("response.failed")) return d.path("response").path("error").path("message").asText();
                if (d.path("error").path("message").isTextual()) return d.path("error").path("message").asText();
            }
            return fail("no error event in: " + sse);
        }

        void breaksReadably(String upstreamPath, StubUpstream.Reply cut, String path, String body) throws Exception {
            h.stub.enqueue(upstreamPath, cut);
            HttpResponse<String> r = h.post(path, body);
            assertEquals(200, r.statusCode(), r.body());
            String message = errorMessage(r.body());
            assertTrue(message.length() < 160, "short: " + message);
            assertTrue(message.contains("Copilot") && message.contains("connection was closed before the answer was complete"), message);
            assertFalse(message.matches("(?s).*(HttpConnection|EndPoint|@[0-9a-f]{4,}|\\{[a-z]+=).*"), "no connection dump: " + message);
            HttpResponse<String> next = h.post("/v1/chat/completions", ChatBehaviourTests.HI);
            assertEquals(200, next.statusCode(), "the next request is served: " + next.body());
        }

        @Test
        void aCutChatStreamEndsWithAReadableErrorChunk() throws Exception {
            breaksReadably("/chat/completions", StubUpstream.Reply.rawSse(UpstreamScripts.CHAT_HEAD + UpstreamScripts.CHAT_TAIL).cutAfter(1),
                "/v1/chat/completions", streaming(CHAT_HI));
        }

        @Test
        void aCutNativeMessagesStreamEndsWithAReadableErrorEvent() throws Exception {
            breaksReadably("/v1/messages", StubUpstream.Reply.rawSse(UpstreamScripts.MESSAGES_HEAD + UpstreamScripts.MESSAGES_TAIL).cutAfter(3),
                "/v1/messages", streaming(MESSAGES_HI));
        }

        @Test
        void aCutTranslatedMessagesStreamEndsWithAReadableErrorEvent() throws Exception {
            breaksReadably("/chat/completions", StubUpstream.Reply.rawSse(UpstreamScripts.CHAT_HEAD + UpstreamScripts.CHAT_TAIL).cutAfter(1),
                "/v1/messages", streaming(MESSAGES_HI.replace("claude-sonnet-4.5", "gpt-4.1")));
        }

        @Test
        void aCutResponsesStreamEndsWithAReadableFailure() throws Exception {
            breaksReadably("/responses", StubUpstream.Reply.rawSse(UpstreamScripts.RESPONSES_HEAD + UpstreamScripts.RESPONSES_TAIL).cutAfter(3),
                "/v1/responses", streaming(ResponsesRouteTests.CODEX));
        }

        @Test
        void aCutTranslatedResponsesStreamEndsWithAReadableFailure() throws Exception {
            breaksReadably("/chat/completions", StubUpstream.Reply.rawSse(UpstreamScripts.CHAT_HEAD + UpstreamScripts.CHAT_TAIL).cutAfter(1),
                "/v1/responses", streaming(ResponsesRouteTests.CODEX.replace("gpt-5.1-codex", "gpt-4.1")));
        }
    }

    /** A client that leaves while Copilot has not answered: the upstream call is cancelled, its connection closed. */
    @TestInstance(TestInstance.Lifecycle.PER_CLASS)
    static final class ClientDisconnectTests {
        StubUpstream.Silent silent;
        Harness h;
        StubUpstream.Gated gated;
        Harness streaming;

        @BeforeAll
        void up() throws IOException {
            StubUpstream stub = StubUpstream.start();
            gated = new StubUpstream.Gated(stub);
            streaming = new Harness(stub, Map.of("COPILOT_API_COPILOT_URL", gated.url()), o -> { });
            silent = new StubUpstream.Silent(stub);
            h = new Harness(stub, Map.of("COPILOT_API_COPILOT_URL", silent.url()), o -> { }, CopilotApi.Operator.Controls.none(),
                // no early commit: a stream's client has not been written to, so only watching its connection can tell
                new CopilotApi.Timeouts(Duration.ofSeconds(60), Duration.ofSeconds(60), Duration.ofSeconds(60), Duration.ofSeconds(60), CopilotApi.Timeouts.DEFAULT.keepAlive()));
        }

        @AfterAll
        void down() {
            h.close();
            silent.close();
            streaming.close();
            gated.close();
        }

        /**
         * A client that leaves a running stream while Copilot is between two events: every route cancels the upstream
         * call within a second or two (the heartbeat looks at the client), not at its next write or keep-alive.
         */
        @Test
        void aClientLeavingARunningStreamCancelsTheUpstreamCallWhileCopilotIsSilent() throws Exception {
            record Route(String name, String path, String body, String head, String tail) {}
            List<Route> routes = List.of(
                new Route("chat", "/v1/chat/completions", streaming(CHAT_HI), UpstreamScripts.CHAT_HEAD, UpstreamScripts.CHAT_TAIL),
                new Route("chat on a responses-only model", "/v1/chat/completions", streaming(UpstreamScripts.CODEX_CHAT),
                    UpstreamScripts.RESPONSES_HEAD, UpstreamScripts.RESPONSES_TAIL),
                new Route("messages native", "/v1/messages", streaming(MESSAGES_HI), UpstreamScripts.MESSAGES_HEAD, UpstreamScripts.MESSAGES_TAIL),
                new Route("messages translated", "/v1/messages", streaming(MESSAGES_HI.replace("claude-sonnet-4.5", "gpt-4.1")),
                    UpstreamScripts.CHAT_HEAD, UpstreamScripts.CHAT_TAIL),
                new Route("responses native", "/v1/responses", streaming(ResponsesRouteTests.CODEX), UpstreamScripts.RESPONSES_HEAD,
                    UpstreamScripts.RESPONSES_TAIL),
                new Route("responses translated", "/v1/responses", streaming(ResponsesRouteTests.CODEX.replace("gpt-5.1-codex", "gpt-4.1")),
                    UpstreamScripts.CHAT_HEAD, UpstreamScripts.CHAT_TAIL));
            for (Route route : routes) {
                gated.script(route.head(), route.tail());
                try (java.net.Socket s = new java.net.Socket("127.0.0.1", streaming.server.port())) {
                    s.setSoTimeout(10_000);
                    byte[] bytes = route.body().getBytes(UTF_8);
                    s.getOutputStream().write(("POST " + route.path() + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        + "Content-Length: " + bytes.length + "\r\n\r\n").getBytes(UTF_8));
                    s.getOutputStream().write(bytes);
                    s.getOutputStream().flush();
                    StringBuilder seen = new StringBuilder();
                    byte[] buf = new byte[4096];
                    for (int n; !seen.toString().contains(UpstreamScripts.FIRST_WORDS) && (n = s.getInputStream().read(buf)) > 0; ) {
                        seen.append(new String(buf, 0, n, UTF_8));
                    }
                    assertTrue(seen.toString().contains(UpstreamScripts.FIRST_WORDS), route.name() + ": " + seen);
                }
                try {
                    assertTrue(gated.awaitClosedAtGate(Duration.ofSeconds(3)), route.name() + ": the upstream call was cancelled");
                } finally {
                    gated.open();
                }
            }
            gated.script(UpstreamScripts.CHAT_HEAD, UpstreamScripts.CHAT_TAIL).open();
            HttpResponse<String> next = streaming.post("/v1/chat/completions", streaming(CHAT_HI));
            assertEquals(200, next.statusCode(), next.body());
            assertTrue(next.body().contains("[DONE]"), "the next stream is served: " + next.body());
        }

        /** Sends the request on a raw socket, waits until Copilot has it, closes the socket; true once the upstream connection closed. */
        boolean leaveAndSeeUpstreamClosed(String path, String body) throws Exception {
            return leaveAndSeeUpstreamClosed(path, body, Duration.ofSeconds(5));
        }

        boolean leaveAndSeeUpstreamClosed(String path, String body, Duration limit) throws Exception {
            int seen = silent.seen().size();
            int closed = silent.closedCount();
            try (java.net.Socket s = new java.net.Socket("127.0.0.1", h.server.port())) {
                byte[] bytes = body.getBytes(UTF_8);
                s.getOutputStream().write(("POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
                    + bytes.length + "\r\n\r\n").getBytes(UTF_8));
                s.getOutputStream().write(bytes);
                s.getOutputStream().flush();
                assertEquals(seen + 1, eventually(Duration.ofSeconds(5), () -> silent.seen().size(), n -> n > seen), "Copilot got the call");
            }
            return silent.awaitClosed(closed + 1, limit);
        }

        @Test
        void aClientLeavingANonStreamingRequestCancelsTheUpstreamCall() throws Exception {
            assertTrue(leaveAndSeeUpstreamClosed("/v1/chat/completions", CHAT_HI));
        }

        @Test
        void aClientLeavingAStreamBeforeItsFirstByteCancelsTheUpstreamCall() throws Exception {
            assertTrue(leaveAndSeeUpstreamClosed("/v1/messages", streaming(MESSAGES_HI)));
        }

        /** The upstream connection closes within a second of the client leaving, on every route, each time of several. */
        @Test
        void everyRouteCancelsItsUpstreamCallPromptlyEachTime() throws Exception {
            Map<String, String> routes = new java.util.LinkedHashMap<>();
            routes.put("chat", CHAT_HI);
            routes.put("chat stream", streaming(CHAT_HI));
            routes.put("messages", MESSAGES_HI);
            routes.put("messages stream", streaming(MESSAGES_HI));
            routes.put("responses", ResponsesRouteTests.CODEX);
            routes.put("responses stream", streaming(ResponsesRouteTests.CODEX));
            routes.put("embeddings", "{\"model\":\"text-embedding-3-small\",\"input\":\"hi\"}");
            for (int round = 0; round < 3; round++) {
                for (var route : routes.entrySet()) {
                    String path = route.getKey().startsWith("chat") ? "/v1/chat/completions" : route.getKey().startsWith("messages") ? "/v1/messages"
                        : route.getKey().startsWith("responses") ? "/v1/responses" : "/v1/embeddings";
                    long start = System.nanoTime();
                    assertTrue(leaveAndSeeUpstreamClosed(path, route.getValue(), Duration.ofSeconds(1)), route.getKey() + ", round " + round);
                    assertTrue(System.nanoTime() - start < Duration.ofSeconds(3).toNanos(), route.getKey());
                }
            }
            assertEquals(200, h.get("/v1/models").statusCode(), "the server still answers");
        }
    }

    /** Upstream streams cut in two, for {@link StubUpstream.Gated}: a head sent at once, a tail sent when the test says. */
    static final class UpstreamScripts {
        static final String FIRST_WORDS = "Hel";
        static final String CODEX_CHAT = CHAT_HI.replace("gpt-4.1", "gpt-5.1-codex");

        static final String CHAT_HEAD = "data: {\"id\":\"chatcmpl-g\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-4.1\","
            + "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n";
        static final String CHAT_TAIL = "data: {\"id\":\"chatcmpl-g\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-4.1\","
            + "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}],"
            + "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\ndata: [DONE]\n\n";

        static final String MESSAGES_HEAD = event("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_g\",\"type\":\"message\","
                + "\"role\":\"assistant\",\"model\":\"claude-sonnet-4.5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
                + "\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}")
            + event("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}")
            + event("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}");
        static final String MESSAGES_TAIL = event("content_block_delta",
                "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}")
            + event("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}")
            + event("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
                + "\"usage\":{\"output_tokens\":2}}")
            + event("message_stop", "{\"type\":\"message_stop\"}");

        static final String RESPONSE = "{\"id\":\"resp_g\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-5.1-codex\",\"output\":[]}";
        static final String REASONING_ITEM = "{\"id\":\"rs_g\",\"type\":\"reasoning\",\"summary\":[{\"type\":\"summary_text\",\"text\":\"Thinking\"}],"
            + "\"encrypted_content\":\"enc\"}";
        static final String MESSAGE_ITEM = "{\"id\":\"msg_g\",\"type\":\"message\",\"role\":\"assistant\",\"status\":\"completed\","
            + "\"content\":[{\"type\":\"output_text\",\"text\":\"Hello\",\"annotations\":[]}]}";
        /** Reasoning, then the first words; then an event that gives no chat chunk and the first line of the next event. */
        static final String RESPONSES_HEAD = event("response.created", "{\"type\":\"response.created\",\"sequence_number\":0,\"response\":" + RESPONSE + "}")
            + event("response.output_item.added", "{\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,"
                + "\"item\":{\"id\":\"rs_g\",\"type\":\"reasoning\",\"summary\":[]}}")
            + event("response.reasoning_summary_text.delta", "{\"type\":\"response.reasoning_summary_text.delta\",\"sequence_number\":2,"
                + "\"item_id\":\"rs_g\",\"output_index\":0,\"summary_index\":0,\"delta\":\"Thinking\"}")
            + event("response.output_item.done", "{\"type\":\"response.output_item.done\",\"sequence_number\":3,\"output_index\":0,"
                + "\"item\":" + REASONING_ITEM + "}")
            + event("response.output_item.added", "{\"type\":\"response.output_item.added\",\"sequence_number\":4,\"output_index\":1,"
                + "\"item\":{\"id\":\"msg_g\",\"type\":\"message\",\"role\":\"assistant\",\"status\":\"in_progress\",\"content\":[]}}")
            + event("response.output_text.delta", "{\"type\":\"response.output_text.delta\",\"sequence_number\":5,\"item_id\":\"msg_g\","
                + "\"output_index\":1,\"content_index\":0,\"delta\":\"Hel\"}")
            + event("response.in_progress", "{\"type\":\"response.in_progress\",\"sequence_number\":6,\"response\":" + RESPONSE + "}")
            + "event: response.output_text.delta\n";
        static final String RESPONSES_TAIL = "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":7,\"item_id\":\"msg_g\","
                + "\"output_index\":1,\"content_index\":0,\"delta\":\"lo\"}\n\n"
            + event("response.output_item.done", "{\"type\":\"response.output_item.done\",\"sequence_number\":8,\"output_index\":1,"
                + "\"item\":" + MESSAGE_ITEM + "}")
            + event("response.completed", "{\"type\":\"response.completed\",\"sequence_number\":9,\"response\":"
                + "{\"id\":\"resp_g\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"gpt-5.1-codex\",\"output\":["
                + REASONING_ITEM + "," + MESSAGE_ITEM + "],\"usage\":{\"input_tokens\":5,\"output_tokens\":2,\"total_tokens\":7}}}");

        static String event(String name, String data) {
            return "event: " + name + "\ndata: " + data + "\n\n";
        }
    }

    /**
     * Every event reaches the client when Copilot sends it: a responses-only model reached from chat or Messages
     * streams its reasoning and first words while Copilot still holds the rest (the stub waits at a gate until the
     * client has seen them).
     */
    @TestInstance(TestInstance.Lifecycle.PER_CLASS)
    static final class StreamFlushTests {
        StubUpstream.Gated gated;
        Harness h;

        @BeforeAll
        void up() throws IOException {
            StubUpstream stub = StubUpstream.start();
            gated = new StubUpstream.Gated(stub);
            h = new Harness(stub, Map.of("COPILOT_API_COPILOT_URL", gated.url()), o -> { });
        }

        @AfterAll
        void down() {
            h.close();
            gated.close();
        }

        /** Reads the stream until it has shown every word given; the text so far. */
        static String readUntil(InputStream in, StringBuilder seen, String... words) throws IOException {
            byte[] buf = new byte[4096];
            while (!Stream.of(words).allMatch(w -> seen.toString().contains(w))) {
                int n = in.read(buf);
                if (n < 0) break;
                seen.append(new String(buf, 0, n, UTF_8));
            }
            return seen.toString();
        }

        void seesTheFirstEventsBeforeCopilotSendsTheRest(String path, String body, String reasoning, String end) throws Exception {
            gated.script(UpstreamScripts.RESPONSES_HEAD, UpstreamScripts.RESPONSES_TAIL);
            HttpResponse<InputStream> r = h.postStreaming(path, body);
            assertEquals(200, r.statusCode());
            StringBuilder seen = new StringBuilder();
            var early = java.util.concurrent.CompletableFuture.supplyAsync(() -> {
                try {
                    return readUntil(r.body(), seen, reasoning, UpstreamScripts.FIRST_WORDS);
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            });
            try {
                String first = early.get(10, TimeUnit.SECONDS);
                assertTrue(first.contains(reasoning) && first.contains(UpstreamScripts.FIRST_WORDS), first);
                assertFalse(first.contains(end), "the stub has not sent the end yet: " + first);
            } catch (java.util.concurrent.TimeoutException e) {
                fail("the reasoning and the first words did not reach the client while Copilot held the rest; seen: " + seen);
            } finally {
                gated.open();
            }
            String all = readUntil(r.body(), seen, end);
            assertTrue(all.contains("lo") && all.contains(end), all);
        }

        @Test
        void aChatStreamOfAResponsesOnlyModelIsFlushedAsCopilotSendsIt() throws Exception {
            seesTheFirstEventsBeforeCopilotSendsTheRest("/v1/chat/completions", streaming(UpstreamScripts.CODEX_CHAT), "\"reasoning_text\":\"Thinking\"",
                "[DONE]");
            assertEquals(200, h.get("/v1/models").statusCode(), "the server still answers");
        }

        @Test
        void aMessagesStreamOfAResponsesOnlyModelIsFlushedAsCopilotSendsIt() throws Exception {
            seesTheFirstEventsBeforeCopilotSendsTheRest("/v1/messages", streaming(MESSAGES_HI.replace("claude-sonnet-4.5", "gpt-5.1-codex")),
                "\"thinking\":\"Thinking\"", "message_stop");
        }
    }

    /** A client that reads slowly: Copilot is read no faster than the client takes the answer. */
    static final class SlowReaderTests extends WithHarness {
        static final long FLOOD = 64L * 1024 * 1024;
        /** Socket buffers on the two loopback hops, Jetty's and HttpClient's buffers and the hand-off, with room to spare. */
        static final long BOUND = 16L * 1024 * 1024;

        @Test
        void theUpstreamIsNotReadFarAheadOfASlowClient() throws Exception {
            h.stub.enqueue("/chat/completions", StubUpstream.Reply.flood(FLOOD));
            try (java.net.Socket s = new java.net.Socket()) {
                s.setReceiveBufferSize(16 * 1024);
                s.connect(new java.net.InetSocketAddress("127.0.0.1", h.server.port()));
                byte[] body = streaming(CHAT_HI).getBytes(UTF_8);
                s.getOutputStream().write(("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    + "Content-Length: " + body.length + "\r\n\r\n").getBytes(UTF_8));
                s.getOutputStream().write(body);
                s.getOutputStream().flush();
                assertEquals(2048, s.getInputStream().readNBytes(2048).length);
                StubUpstream.Recorded upstream = h.stub.await("/chat/completions", Duration.ofSeconds(5));
                long sent = settled(upstream);
                assertTrue(sent < BOUND, "Copilot was read " + sent + " bytes ahead of a client that took 2 KB");
            }
            StubUpstream.Recorded upstream = h.stub.last("/chat/completions");
            assertTrue(upstream.awaitClientGone(Duration.ofSeconds(10)), "the upstream is let go when the client leaves");
        }

        /** The stub's byte count once it has not moved for half a second (or after 20 s). */
        static long settled(StubUpstream.Recorded r) throws InterruptedException {
            long end = System.nanoTime() + Duration.ofSeconds(20).toNanos();
            long last = -1;
            while (System.nanoTime() < end) {
                long now = r.bytesSent();
                if (now == last) return now;
                last = now;
                Thread.sleep(500);
            }
            return r.bytesSent();
        }
    }

    /** What needs a real terminal (the numbered model prompt, --manual), run under script(1), which gives it a pty. */
    @org.junit.jupiter.api.Timeout(value = 90, threadMode = org.junit.jupiter.api.Timeout.ThreadMode.SEPARATE_THREAD)
    static final class TerminalTests {
        /** copilot-api start under script(1): its output read line by line, its terminal typed into. */
        static final class OnTerminal implements AutoCloseable {
            final Process process;
            final BufferedReader out;
            final java.io.Writer keys;
            final StringBuilder log = new StringBuilder();

            OnTerminal(Map<String, String> env, String... startArgs) throws IOException {
                org.junit.jupiter.api.Assumptions.assumeTrue(CopilotApi.Clipboard.onPath("script"), "no script(1) on PATH");
                List<String> args = new ArrayList<>(List.of("start", "--port", "0", "--github-token", StubUpstream.VALID_GITHUB_TOKEN));
                args.addAll(List.of(startArgs));
                StringBuilder command = new StringBuilder();
                for (String part : CliTests.command(args.toArray(String[]::new))) {
                    command.append(CopilotApi.ClaudeCodeSetup.posixQuote(part)).append(' ');
                }
                ProcessBuilder pb = new ProcessBuilder("script", "-qfec", command.toString().trim(), "/dev/null").redirectErrorStream(true);
                pb.environment().putAll(env);
                process = pb.start();
                out = new BufferedReader(new InputStreamReader(process.getInputStream(), UTF_8));
                keys = new java.io.OutputStreamWriter(process.getOutputStream(), UTF_8);
            }

            /** Reads until the text shows up (prompts end without a newline, so this reads characters). */
            String until(String text) throws IOException {
                StringBuilder seen = new StringBuilder();
                int c;
                while ((c = out.read()) >= 0) {
                    seen.append((char) c);
                    log.append((char) c);
                    if (seen.indexOf(text) >= 0) return seen.toString();
                }
                throw new AssertionError("never saw '" + text + "' in:\n" + log);
            }

            void type(String line) throws IOException {
                keys.write(line + "\n");
                keys.flush();
            }

            String baseUrl() throws IOException {
                until("listening on http://");
                String rest = until("\n");
                return "http://" + rest.trim();
            }

            @Override
            public void close() {
                process.destroyForcibly();
            }
        }

        @Test
        void theClaudeCodePromptOffersNumberedModels() throws Exception {
            try (StubUpstream stub = StubUpstream.start();
                    OnTerminal t = new OnTerminal(CliTests.env(stub, Files.createTempDirectory("h")), "--claude-code", "--shell", "posix")) {
                String menu = t.until("Number [");
                assertTrue(menu.contains("Choose the main model for Claude Code:"), menu);
                assertTrue(menu.matches("(?s).*\\s1\\) gpt-4\\.1 \\(free\\).*"), menu);
                assertTrue(menu.contains(") claude-opus-4.1 (10 premium requests)"), "each model with what a prompt to it costs: " + menu);
                t.type("1");
                String second = t.until("Number [");
                assertTrue(second.contains("small, fast model"), second);
                t.type("");
                String command = t.until("claude\r\n");
                assertTrue(command.contains("ANTHROPIC_MODEL=gpt-4.1 "), command);
                assertTrue(command.contains("ANTHROPIC_SMALL_FAST_MODEL=gpt-4.1 "), "the default small model is a free one: " + command);
            }
        }

        @Test
        void manualApprovalAsksAtTheTerminal() throws Exception {
            try (StubUpstream stub = StubUpstream.start();
                    OnTerminal t = new OnTerminal(CliTests.env(stub, Files.createTempDirectory("h")), "--manual")) {
                String base = t.baseUrl();
                HttpClient client = HttpClient.newHttpClient();
                var pending = client.sendAsync(HttpRequest.newBuilder(URI.create(base + "/v1/chat/completions"))
                    .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(CHAT_HI)).build(), HttpResponse.BodyHandlers.ofString());
                String question = t.until("[y/N] ");
                assertTrue(question.contains("Allow POST /v1/chat/completions model=gpt-4.1 messages=1?"), question);
                t.type("y");
                assertEquals(200, pending.get(30, TimeUnit.SECONDS).statusCode());
                pending = client.sendAsync(HttpRequest.newBuilder(URI.create(base + "/v1/chat/completions"))
                    .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(CHAT_HI)).build(), HttpResponse.BodyHandlers.ofString());
                t.until("[y/N] ");
                t.type("n");
                HttpResponse<String> refused = pending.get(30, TimeUnit.SECONDS);
                assertEquals(403, refused.statusCode());
                assertEquals(1, stub.count("/chat/completions"));
            }
        }

        /** --manual with the Claude Code prompt: the model choice reads the terminal first, then the questions, one reader for both. */
        @Test
        void theClaudeCodePromptAndManualApprovalShareTheTerminal() throws Exception {
            try (StubUpstream stub = StubUpstream.start();
                    OnTerminal t = new OnTerminal(CliTests.env(stub, Files.createTempDirectory("h")), "--manual", "--claude-code", "--shell", "posix")) {
                t.until("Number [");
                t.type("1");
                assertTrue(t.until("Number [").contains("small, fast model"), "the first answer reached the model prompt");
                t.type("1");
                String base = t.baseUrl();
                assertTrue(t.until("claude\r\n").contains("ANTHROPIC_SMALL_FAST_MODEL=gpt-4.1 "), t.log.toString());
                var pending = HttpClient.newHttpClient().sendAsync(HttpRequest.newBuilder(URI.create(base + "/v1/chat/completions"))
                    .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(CHAT_HI)).build(), HttpResponse.BodyHandlers.ofString());
                t.until("[y/N] ");
                t.type("y");
                assertEquals(200, pending.get(30, TimeUnit.SECONDS).statusCode());
                assertEquals(1, stub.count("/chat/completions"));
            }
        }
    }

    // ==== Stale keep-alive connections ====

    static final class StaleConnectionTests {
        /** A loopback HTTP/1.1 upstream written on raw sockets, so a test decides what each connection gets. */
        abstract static class RawUpstream implements AutoCloseable {
            final java.net.ServerSocket server = new java.net.ServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress());

            RawUpstream(String name) throws IOException {
                Thread accept = new Thread(() -> accept(name), name);
                accept.setDaemon(true);
                accept.start();
            }

            String url() {
                return "http://127.0.0.1:" + server.getLocalPort();
            }

            private void accept(String name) {
                while (!server.isClosed()) {
                    try {
                        java.net.Socket s = server.accept();
                        Thread t = new Thread(() -> serve(s), name + "-connection");
                        t.setDaemon(true);
                        t.start();
                    } catch (IOException e) {
                        return;
                    }
                }
            }

            abstract void serve(java.net.Socket s);

            @Override
            public void close() throws IOException {
                server.close();
            }
        }

        /** Answers the first request on each connection with keep-alive, then reads the next one and closes without a byte. */
        static final class ClosingUpstream extends RawUpstream {
            static final String ANSWER = "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[]}";
            final java.util.concurrent.atomic.AtomicInteger dropped = new java.util.concurrent.atomic.AtomicInteger();

            ClosingUpstream() throws IOException {
                super("closing-upstream");
            }

            @Override
            String url() {
                return super.url() + "/copilot";
            }

            @Override
            void serve(java.net.Socket s) {
                try (s) {
                    InputStream in = new java.io.BufferedInputStream(s.getInputStream());
                    readRequest(in);
                    byte[] body = ANSWER.getBytes(UTF_8);
                    s.getOutputStream().write(("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + body.length + "\r\n\r\n")
                        .getBytes(UTF_8));
                    s.getOutputStream().write(body);
                    s.getOutputStream().flush();
                    if (readRequest(in)) dropped.incrementAndGet();
                } catch (IOException e) {
                    // the client went away; nothing to answer
                }
            }

            /** Reads one request head and its Content-Length body; false at the end of the stream. */
            private static boolean readRequest(InputStream in) throws IOException {
                StringBuilder head = new StringBuilder();
                int c;
                while ((c = in.read()) != -1) {
                    head.append((char) c);
                    if (head.length() >= 4 && head.substring(head.length() - 4).equals("\r\n\r\n")) break;
                }
                if (c == -1) return false;
                int length = 0;
                for (String line : head.toString().split("\r\n")) {
                    if (line.toLowerCase(java.util.Locale.ROOT).startsWith("content-length:")) length = Integer.parseInt(line.substring(15).trim());
                }
                in.readNBytes(length);
                return true;
            }
        }

        /**
         * Reads each POST whole on a new connection and, while told to, closes it without a byte of answer (Copilot
         * got the prompt, then the connection broke); otherwise answers it. Catalog GETs get an empty list.
         */
        static final class SwallowingUpstream extends RawUpstream {
            static final String ANSWER = "{\"id\":\"chatcmpl-2\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"gpt-4.1\","
                + "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":\"stop\"}],"
                + "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";
            final java.util.concurrent.atomic.AtomicInteger posts = new java.util.concurrent.atomic.AtomicInteger();
            final java.util.concurrent.atomic.AtomicInteger swallow = new java.util.concurrent.atomic.AtomicInteger();

            SwallowingUpstream() throws IOException {
                super("swallowing-upstream");
            }

            @Override
            void serve(java.net.Socket s) {
                try (s) {
                    InputStream in = new java.io.BufferedInputStream(s.getInputStream());
                    in.mark(8);
                    boolean post = in.read() == 'P';
                    in.reset();
                    if (!ClosingUpstream.readRequest(in)) return;
                    String body = "{\"object\":\"list\",\"data\":[]}";
                    if (post) {
                        posts.incrementAndGet();
                        if (swallow.getAndUpdate(n -> Math.max(0, n - 1)) > 0) return;
                        body = ANSWER;
                    }
                    byte[] bytes = body.getBytes(UTF_8);
                    s.getOutputStream().write(("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: "
                        + bytes.length + "\r\n\r\n").getBytes(UTF_8));
                    s.getOutputStream().write(bytes);
                    s.getOutputStream().flush();
                } catch (IOException e) {
                    // the client went away; nothing to answer
                }
            }
        }

        @Test
        void aPostThatANewConnectionLostAfterCopilotReadItIsNotSentAgain() throws Exception {
            try (SwallowingUpstream upstream = new SwallowingUpstream();
                    Harness h = new Harness(StubUpstream.start(), Map.of("COPILOT_API_COPILOT_URL", upstream.url()), o -> { })) {
                upstream.swallow.set(1);
                HttpResponse<String> r = h.post("/v1/chat/completions", ChatBehaviourTests.HI);
                assertEquals(502, r.statusCode(), r.body());
                assertEquals("api_error", json(r.body()).path("error").path("type").asText(), r.body());
                assertEquals(1, upstream.posts.get(), "the prompt went to Copilot once");
                HttpResponse<String> next = h.post("/v1/chat/completions", ChatBehaviourTests.HI);
                assertEquals(200, next.statusCode(), next.body());
                assertEquals(2, upstream.posts.get());
            }
        }

        @Test
        void aPostOnAKeepAliveConnectionTheUpstreamClosedIsSentAgainOnANewOne() throws Exception {
            try (Harness h = Harness.start(); ClosingUpstream upstream = new ClosingUpstream()) {
                Map<String, String> env = new HashMap<>(h.stub.env());
                env.put("COPILOT_API_HOME", h.home.toString());
                env.put("COPILOT_API_COPILOT_URL", upstream.url());
                CopilotApi.CommonOptions options = new CopilotApi.CommonOptions();
                options.accountType = CopilotApi.AccountType.individual;
                CopilotApi.Settings settings = CopilotApi.Settings.from(options, env);
                var copilot = new CopilotApi.CopilotClient(settings, CopilotApi.Http.create(settings), h.tokens, CopilotApi.Timeouts.DEFAULT);
                JsonNode body = json(ChatBehaviourTests.HI);
                for (int i = 0; i < 3; i++) {
                    assertEquals("chatcmpl-1", copilot.postJson("/chat/completions", body, CopilotApi.CallOptions.PLAIN).path("id").asText());
                }
                assertEquals(2, upstream.dropped.get(), "the second and third POST each met a connection closed under them");
            }
        }
    }

    // ==== TLS ====

    /**
     * Copilot and GitHub are HTTPS: the upstream client checks the certificate and the name in it. A TLS front
     * (a self-signed certificate for 127.0.0.1, made with keytool) forwards to the plain stub; copilot-api runs as
     * its own process, trusting that certificate only when told to through the JVM's trust store.
     */
    static final class TlsTests {
        @Test
        void upstreamCallsUseTlsAndRefuseACertificateTheyDoNotTrust() throws Exception {
            Path dir = Files.createTempDirectory("copilot-api-tls");
            Path keystore = dir.resolve("upstream.p12");
            Process keytool = new ProcessBuilder(Path.of(System.getProperty("java.home"), "bin", "keytool").toString(), "-genkeypair",
                "-alias", "upstream", "-keyalg", "EC", "-groupname", "secp256r1", "-dname", "CN=127.0.0.1", "-ext", "san=ip:127.0.0.1",
                "-validity", "2", "-keystore", keystore.toString(), "-storetype", "PKCS12", "-storepass", "changeit")
                .redirectErrorStream(true).start();
            assertTrue(keytool.waitFor(60, TimeUnit.SECONDS) && keytool.exitValue() == 0, new String(keytool.getInputStream().readAllBytes(), UTF_8));
            try (StubUpstream stub = StubUpstream.start(); TlsFront front = new TlsFront(keystore, stub.port())) {
                Map<String, String> env = new HashMap<>();
                stub.env().forEach((k, v) -> env.put(k, v.replace("http://127.0.0.1:" + stub.port(), "https://127.0.0.1:" + front.port())));
                assertTrue(env.get("COPILOT_API_COPILOT_URL").startsWith("https://"), env.toString());
                env.put("COPILOT_API_HOME", dir.resolve("home").toString());

                CliTests.Run refused = CliTests.cli(env, "start", "--port", "0", "--github-token", StubUpstream.VALID_GITHUB_TOKEN);
                assertNotEquals(0, refused.exit(), refused.out() + refused.err());
                assertTrue((refused.out() + refused.err()).matches("(?s).*(certificat|PKIX).*"), "names the certificate: " + refused.err());
                assertEquals(0, stub.count("/api/copilot_internal/v2/token"), "nothing reached GitHub through an untrusted connection");

                env.put("JDK_JAVA_OPTIONS", "-Djavax.net.ssl.trustStore=" + keystore + " -Djavax.net.ssl.trustStorePassword=changeit");
                try (CliTests.Started started = new CliTests.Started(env)) {
                    String base = started.baseUrl();
                    HttpResponse<String> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(base + "/v1/chat/completions"))
                        .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(CHAT_HI)).build(),
                        HttpResponse.BodyHandlers.ofString());
                    assertEquals(200, r.statusCode(), r.body() + started.log);
                    assertEquals(1, stub.count("/chat/completions"), started.log.toString());
                    assertTrue(front.connections.get() > 0);
                }
            }
        }

        /** Terminates TLS with the given key store and pipes the plain bytes to a local port. */
        static final class TlsFront implements AutoCloseable {
            final javax.net.ssl.SSLServerSocket server;
            final java.util.concurrent.atomic.AtomicInteger connections = new java.util.concurrent.atomic.AtomicInteger();
            private final int target;

            TlsFront(Path keystore, int target) throws Exception {
                this.target = target;
                java.security.KeyStore ks = java.security.KeyStore.getInstance("PKCS12");
                try (InputStream in = Files.newInputStream(keystore)) {
                    ks.load(in, "changeit".toCharArray());
                }
                javax.net.ssl.KeyManagerFactory kmf = javax.net.ssl.KeyManagerFactory.getInstance(javax.net.ssl.KeyManagerFactory.getDefaultAlgorithm());
                kmf.init(ks, "changeit".toCharArray());
                javax.net.ssl.SSLContext tls = javax.net.ssl.SSLContext.getInstance("TLS");
                tls.init(kmf.getKeyManagers(), null, null);
                server = (javax.net.ssl.SSLServerSocket) tls.getServerSocketFactory().createServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress());
                Thread accept = new Thread(this::accept, "tls-front");
                accept.setDaemon(true);
                accept.start();
            }

            int port() {
                return server.getLocalPort();
            }

            private void accept() {
                while (!server.isClosed()) {
                    try {
                        java.net.Socket outside = server.accept();
                        java.net.Socket inside = new java.net.Socket(java.net.InetAddress.getLoopbackAddress(), target);
                        connections.incrementAndGet();
                        pipe(outside, inside);
                        pipe(inside, outside);
                    } catch (IOException e) {
                        // a refused handshake or the end: the next connection is on its own
                    }
                }
            }

            private static void pipe(java.net.Socket from, java.net.Socket to) {
                Thread t = new Thread(() -> {
                    try (from; to) {
                        from.getInputStream().transferTo(to.getOutputStream());
                    } catch (IOException e) {
                        // one side closed; both go
                    }
                }, "tls-front-pipe");
                t.setDaemon(true);
                t.start();
            }

            @Override
            public void close() throws IOException {
                server.close();
            }
        }
    }

    // ==== Proxies ====

    static final class ProxyTests {
        /** The proxy Jetty's client picks for a URL ("direct" for none), with the proxies configured as production configures them. */
        static String proxyFor(Map<String, String> env, String url) {
            var client = new org.eclipse.jetty.client.HttpClient();
            CopilotApi.EnvProxySelector.from(env).configure(client);
            URI u = URI.create(url);
            int port = u.getPort() > 0 ? u.getPort() : u.getScheme().equals("https") ? 443 : 80;
            var proxy = client.getProxyConfiguration().match(new org.eclipse.jetty.client.Origin(u.getScheme(), u.getHost(), port));
            return proxy == null ? "direct" : proxy.getAddress().getHost() + ":" + proxy.getAddress().getPort();
        }

        @Test
        void noProxyRules() {
            var env = Map.of("https_proxy", "http://proxy:3128", "NO_PROXY", "localhost,.internal.example,example.org:8443,10.0.0.1");
            assertEquals("proxy:3128", proxyFor(env, "https://api.githubcopilot.com/x"));
            assertEquals("direct", proxyFor(env, "https://localhost/x"));
            assertEquals("direct", proxyFor(env, "https://a.internal.example/x"));
            assertEquals("direct", proxyFor(env, "https://internal.example/x"));
            assertEquals("direct", proxyFor(env, "https://example.org:8443/x"));
            assertEquals("proxy:3128", proxyFor(env, "https://example.org/x"));
            assertEquals("direct", proxyFor(env, "https://10.0.0.1/x"));
            assertEquals("direct", proxyFor(env, "http://plain.example/x"), "no HTTP_PROXY set");
            assertEquals("direct", proxyFor(Map.of("HTTP_PROXY", "proxy:8080", "no_proxy", "*"), "http://x/y"));
            assertEquals("proxy:8080", proxyFor(Map.of("HTTP_PROXY", "proxy:8080"), "https://x/y"), "HTTPS falls back to HTTP_PROXY");
        }

        @Test
        void aHostInNoProxyIsCalledDirectly() throws Exception {
            try (StubUpstream.Proxy proxy = new StubUpstream.Proxy().start()) {
                Map<String, String> env = Map.of("HTTP_PROXY", proxy.url(), "HTTPS_PROXY", proxy.url(), "NO_PROXY", "127.0.0.1");
                try (Harness h = new Harness(StubUpstream.start(), env, o -> o.proxyEnv = true)) {
                    assertEquals(200, h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode());
                    assertTrue(proxy.seen().isEmpty(), proxy.seen().toString());
                }
            }
        }

        /** The proxy's user and password go to the proxy only: never to the log at start, nor to debug --json. */
        @Test
        void proxyCredentialsAreNeverLoggedNorShown() throws Exception {
            try (StubUpstream stub = StubUpstream.start(); StubUpstream.Proxy proxy = new StubUpstream.Proxy().start()) {
                String hostPort = proxy.url().substring("http://".length());
                Map<String, String> env = new HashMap<>(CliTests.env(stub, Files.createTempDirectory("h")));
                env.put("HTTPS_PROXY", "http://alice:s3cret-pw@" + hostPort);
                env.put("HTTP_PROXY", "http://alice:s3cret-pw@" + hostPort);
                try (CliTests.Started server = new CliTests.Started(env, "--proxy-env")) {
                    String log = eventually(Duration.ofSeconds(30), () -> server.log.toString(), l -> l.contains("listening on http://"));
                    HttpResponse<String> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(server.baseUrl() + "/v1/chat/completions"))
                        .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(CHAT_HI)).build(),
                        HttpResponse.BodyHandlers.ofString());
                    assertEquals(200, r.statusCode(), r.body() + server.log);
                    assertTrue(proxy.seen().stream().anyMatch(u -> u.endsWith("/copilot/chat/completions")), "went through the proxy: " + proxy.seen());
                    log = server.log.toString();
                    assertTrue(log.contains("upstream proxy from environment") && log.contains(hostPort), "names the proxy: " + log);
                    assertFalse(log.contains("s3cret-pw") || log.contains("alice"), log);
                }
                CliTests.Run debug = CliTests.cli(env, "debug", "--json", "--proxy-env");
                assertEquals(0, debug.exit(), debug.err());
                assertFalse((debug.out() + debug.err()).contains("s3cret-pw") || (debug.out() + debug.err()).contains("alice"), debug.out());
                assertTrue(json(debug.out()).path("proxy").asText().contains(hostPort), debug.out());
            }
        }

        @Test
        void upstreamCallsGoThroughTheProxyWithProxyEnv() throws Exception {
            try (StubUpstream.Proxy proxy = new StubUpstream.Proxy().start()) {
                StubUpstream stub = StubUpstream.start();
                Map<String, String> env = Map.of("HTTP_PROXY", proxy.url(), "HTTPS_PROXY", proxy.url());
                try (Harness h = new Harness(stub, env, o -> o.proxyEnv = true)) {
                    HttpResponse<String> r = h.post("/v1/chat/completions", ChatBehaviourTests.HI);
                    assertEquals(200, r.statusCode(), r.body());
                    assertTrue(proxy.seen().stream().anyMatch(u -> u.endsWith("/api/copilot_internal/v2/token")), "token exchange: " + proxy.seen());
                    assertTrue(proxy.seen().stream().anyMatch(u -> u.endsWith("/copilot/chat/completions")), "chat: " + proxy.seen());
                }
            }
        }

        @Test
        void withoutProxyEnvTheProxyIsIgnored() throws Exception {
            try (StubUpstream.Proxy proxy = new StubUpstream.Proxy().start()) {
                Map<String, String> env = Map.of("HTTP_PROXY", proxy.url(), "HTTPS_PROXY", proxy.url());
                try (Harness h = new Harness(StubUpstream.start(), env, o -> { })) {
                    assertEquals(200, h.post("/v1/chat/completions", ChatBehaviourTests.HI).statusCode());
                    assertTrue(proxy.seen().isEmpty(), proxy.seen().toString());
                }
            }
        }
    }

    // ==== The CLI, as a separate process ====

    static final class CliTests {
        record Run(int exit, String out, String err) {}

        /** java -cp (this test's class path) CopilotApi ARGS: the compiled script, as a separate process. */
        static List<String> command(String... args) {
            List<String> cmd = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "-cp", System.getProperty("java.class.path"), CopilotApi.class.getName()));
            cmd.addAll(List.of(args));
            return cmd;
        }

        /** `copilot-api start --port 0` with the stub's token, as its own process, its output read line by line. */
        static final class Started implements AutoCloseable {
            private static final String END = "\u0000end of output";
            final Process process;
            /** Everything the process printed so far, as lines. */
            final StringBuffer log = new StringBuffer();
            private final java.util.concurrent.BlockingQueue<String> lines = new java.util.concurrent.LinkedBlockingQueue<>();

            Started(Map<String, String> env, String... extraArgs) throws IOException {
                this(env, withToken(extraArgs));
            }

            private static List<String> withToken(String... extraArgs) {
                List<String> args = new ArrayList<>(List.of("start", "--port", "0", "--github-token", StubUpstream.VALID_GITHUB_TOKEN));
                args.addAll(List.of(extraArgs));
                return args;
            }

            /** Exactly these arguments, in an environment without the caller's GitHub variables. */
            Started(Map<String, String> env, List<String> args) throws IOException {
                ProcessBuilder pb = new ProcessBuilder(command(args.toArray(String[]::new))).redirectErrorStream(true);
                pb.environment().keySet().removeIf(k -> k.startsWith("COPILOT_API_") || k.equals("GH_TOKEN") || k.equals("GITHUB_TOKEN") || k.equals("XDG_DATA_HOME"));
                pb.environment().putAll(env);
                process = pb.start();
                // one reader from start to end, so output is never lost, whenever the test looks at it
                Thread pump = new Thread(() -> {
                    try (BufferedReader out = new BufferedReader(new InputStreamReader(process.getInputStream(), UTF_8))) {
                        for (String line = out.readLine(); line != null; line = out.readLine()) {
                            log.append(line).append('\n');
                            lines.add(line);
                        }
                    } catch (IOException e) {
                        log.append("(output unreadable: ").append(e).append(")\n");
                    } finally {
                        lines.add(END);
                    }
                }, "started-output");
                pump.setDaemon(true);
                pump.start();
            }

            /**
             * The first line (from here on) that contains the text, or null at the end of the output or after a minute
             * without it: a process that never prints the line fails its test rather than hanging the suite.
             */
            String lineWith(String text) throws InterruptedException {
                long end = System.nanoTime() + TimeUnit.MINUTES.toNanos(1);
                for (String line = lines.poll(end - System.nanoTime(), TimeUnit.NANOSECONDS); line != null && !line.equals(END);
                     line = lines.poll(end - System.nanoTime(), TimeUnit.NANOSECONDS)) {
                    if (line.contains(text)) return line;
                }
                lines.add(END);
                return null;
            }

            /** Waits for the process to end and for all of its output to be read. */
            void awaitEnd() throws InterruptedException {
                while (lineWith("\u0000") != null) {
                    continue;
                }
            }

            String baseUrl() throws InterruptedException {
                String line = lineWith("listening on http://");
                assertNotNull(line, log.toString());
                return line.substring(line.indexOf("http://")).trim();
            }

            @Override
            public void close() {
                process.destroyForcibly();
            }
        }

        static Run cli(Map<String, String> env, String... args) throws Exception {
            ProcessBuilder pb = new ProcessBuilder(command(args));
            pb.environment().keySet().removeIf(k -> k.startsWith("COPILOT_API_") || k.equals("GH_TOKEN") || k.equals("GITHUB_TOKEN") || k.equals("XDG_DATA_HOME"));
            pb.environment().putAll(env);
            Path out = Files.createTempFile("out", ".txt");
            Path err = Files.createTempFile("err", ".txt");
            Process p = pb.redirectOutput(out.toFile()).redirectError(err.toFile()).redirectInput(ProcessBuilder.Redirect.PIPE).start();
            p.getOutputStream().close();
            if (!p.waitFor(60, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                fail("timed out: " + String.join(" ", args));
            }
            return new Run(p.exitValue(), Files.readString(out), Files.readString(err));
        }

        static Map<String, String> env(StubUpstream stub, Path home) {
            Map<String, String> env = new HashMap<>(stub.env());
            env.put("COPILOT_API_HOME", home.toString());
            return env;
        }

        /** GH_TOKEN from the gh CLI or CI must not beat the login, and every refusal names the token's source and the fix. */
        @Test
        void anAmbientTokenNeitherBeatsTheStoredLoginNorLoops() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Path home = Files.createTempDirectory("h");
                Map<String, String> env = env(stub, home);
                env.put("GH_TOKEN", "ghp_personalAccessToken0123456789");
                Run usage = cli(env, "check-usage");
                assertEquals(1, usage.exit(), usage.err());
                assertTrue(usage.err().contains("$GH_TOKEN") && usage.err().contains("run `copilot-api auth` once"), usage.err());
                Run start = cli(env, "start", "--port", "0");
                assertEquals(1, start.exit(), start.err());
                assertTrue(start.err().contains("GitHub rejected the GitHub token from $GH_TOKEN"), start.err());
                assertTrue(start.err().contains("a stored login wins over $GH_TOKEN"), "the fix, not a loop: " + start.err());
                assertFalse(start.err().contains("ghp_personal"), "the token itself is never printed: " + start.err());
                new CopilotApi.TokenStore(home).save(StubUpstream.VALID_GITHUB_TOKEN);
                Run stored = cli(env, "check-usage");
                assertEquals(0, stored.exit(), "the stored login wins over GH_TOKEN: " + stored.err());
                try (Started server = new Started(env, List.of("start", "--port", "0"))) {
                    assertNotNull(server.lineWith("using the GitHub token from the stored login"), server.log.toString());
                    assertNotNull(server.lineWith("listening on http://"), server.log.toString());
                }
                env.put("COPILOT_API_GITHUB_TOKEN", "ghp_explicitButWrong0123456789");
                Run explicit = cli(env, "check-usage");
                assertEquals(1, explicit.exit());
                assertTrue(explicit.err().contains("$COPILOT_API_GITHUB_TOKEN") && explicit.err().contains("unset it"), explicit.err());
            }
        }

        /** One rule: every usage error exits 2 with the "Try --help" line, and a typo gets picocli's suggestion. */
        @Test
        void usageErrorsExitTwoBeforeAnythingElseHappens() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Map<String, String> env = env(stub, Files.createTempDirectory("h"));
                Run typo = cli(env, "strat");
                assertEquals(2, typo.exit());
                assertTrue(typo.err().contains("Did you mean: copilot-api start"), typo.err());
                Run option = cli(env, "start", "--rate-limt", "5");
                assertEquals(2, option.exit());
                assertTrue(option.err().contains("--rate-limit"), "suggests the option: " + option.err());
                for (String[] args : List.of(new String[] {"start", "--rate-limit", "0"}, new String[] {"start", "--port", "70000"},
                        new String[] {"start", "--claude-code", "--claude-code-model", "a", "--claude-code-small-model", "b", "--shell", "tcsh"},
                        new String[] {"start", "--shell", "fish"}, new String[] {"start", "--cors-origin", "*"},
                        new String[] {"start", "--cors-origin", "localhost:3000"}, new String[] {"start", "--model-map", "nope"},
                        new String[] {"auth", "--github-token", "x"}, new String[] {"debug", "--show-token"},
                        new String[] {"check-usage", "--account-type", "business"})) {
                    Run r = cli(env, args);
                    assertEquals(2, r.exit(), String.join(" ", args) + ": " + r.err());
                    assertTrue(r.err().contains("Try 'copilot-api " + args[0] + " --help'"), r.err());
                }
                assertEquals(0, stub.requests().size(), "no usage error reached GitHub");
            }
        }

        @Test
        void aBusyPortIsFoundBeforeTheLogin() throws Exception {
            try (StubUpstream stub = StubUpstream.start(); java.net.ServerSocket taken = new java.net.ServerSocket(0, 50,
                    java.net.InetAddress.getByName("127.0.0.1"))) {
                Map<String, String> env = env(stub, Files.createTempDirectory("h"));
                Run r = cli(env, "start", "--port", String.valueOf(taken.getLocalPort()));
                assertEquals(1, r.exit(), r.err());
                assertTrue(r.err().contains("port " + taken.getLocalPort() + " on 127.0.0.1 is in use; pick another with --port"), r.err());
                assertEquals(0, stub.requests().size(), "no device flow was started for a server that cannot listen");
            }
        }

        @Test
        void completionScriptsForBashAndZsh() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Run r = cli(env(stub, Files.createTempDirectory("h")), "generate-completion");
                assertEquals(0, r.exit(), r.err());
                assertTrue(r.out().contains("complete -F") && r.out().contains("--cors-origin") && r.out().contains("check-usage"), r.out());
                assertTrue(r.out().contains("bashcompinit"), "the same script serves zsh");
            }
        }

        /** The terminal shows model calls and trouble, not the dashboard's polling; Copilot's errors come at WARN with their hint. */
        @Test
        void theLogShowsModelCallsAndTroubleNotPolling() throws Exception {
            try (StubUpstream stub = StubUpstream.start();
                    Started server = new Started(env(stub, Files.createTempDirectory("h")), "--api-key", "log-key")) {
                String base = server.baseUrl();
                HttpClient client = HttpClient.newHttpClient();
                for (String path : List.of("/stats", "/usage", "/stats", "/favicon.ico")) {
                    HttpResponse<String> r = client.send(HttpRequest.newBuilder(URI.create(base + path)).header("x-api-key", "log-key").build(),
                        HttpResponse.BodyHandlers.ofString());
                    assertTrue(r.statusCode() < 300, path + " " + r.statusCode());
                }
                HttpResponse<String> icon = client.send(HttpRequest.newBuilder(URI.create(base + "/favicon.ico")).build(), HttpResponse.BodyHandlers.ofString());
                assertEquals(204, icon.statusCode(), "the icon needs no key");
                stub.enqueue("/chat/completions", StubUpstream.Reply.json(466, "{\"error\":{\"message\":\"client version too old\"}}"));
                for (String body : List.of(CHAT_HI, CHAT_HI, "{\"model\":\"no-such-model\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}")) {
                    String path = body.contains("max_tokens") ? "/v1/messages" : "/v1/chat/completions";
                    client.send(HttpRequest.newBuilder(URI.create(base + path)).header("x-api-key", "log-key")
                        .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(body)).build(),
                        HttpResponse.BodyHandlers.ofString());
                }
                assertNotNull(server.lineWith("POST /v1/messages no-such-model"), "an unknown model is named: " + server.log);
                String log = server.log.toString();
                assertTrue(log.matches("(?s).*WARN copilot-api - POST /v1/chat/completions gpt-4\\.1 \\[passthrough] 466 .*COPILOT_API_COPILOT_CHAT_VERSION.*"),
                    "Copilot's error at WARN, with its hint: " + log);
                assertTrue(log.matches("(?s).*INFO copilot-api - POST /v1/chat/completions gpt-4\\.1 \\[passthrough] 200 .*"), log);
                assertFalse(log.contains("GET /stats") || log.contains("GET /usage") || log.contains("favicon"), "polling is not logged: " + log);
                JsonNode stats = json(client.send(HttpRequest.newBuilder(URI.create(base + "/stats")).header("x-api-key", "log-key").build(),
                    HttpResponse.BodyHandlers.ofString()).body());
                boolean counted = false;
                for (JsonNode m : stats.path("models")) counted |= m.path("model").asText().equals("no-such-model") && m.path("errors").asInt() == 1;
                assertTrue(counted, "the unknown model is counted: " + stats);
            }
        }

        @Test
        void enterpriseServerHostsAndPastedUrls() throws Exception {
            Map<String, String> env = Map.of("COPILOT_API_HOME", Files.createTempDirectory("h").toString());
            JsonNode urls = json(cli(env, "debug", "--json", "--enterprise-url", "https://github.acme.corp").out()).path("urls");
            assertEquals("https://github.acme.corp", urls.path("github").asText());
            assertEquals("https://github.acme.corp/api/v3", urls.path("githubApi").asText(), "GitHub Enterprise Server keeps its API under /api/v3");
            Run pasted = cli(env, "debug", "--enterprise-url", "https://acme.ghe.com/login/device");
            assertEquals(2, pasted.exit());
            assertTrue(pasted.err().contains("--enterprise-url takes a host such as acme.ghe.com"), pasted.err());
        }

        @Test
        void theDataDirectoryFollowsHome() throws Exception {
            Path home = Files.createTempDirectory("home");
            JsonNode paths = json(cli(Map.of("HOME", home.toString()), "debug", "--json").out()).path("paths");
            assertEquals(home.resolve(".local/share/copilot-api").toString(), paths.path("dataDir").asText());
            Path xdg = Files.createTempDirectory("xdg");
            paths = json(cli(Map.of("HOME", home.toString(), "XDG_DATA_HOME", xdg.toString()), "debug", "--json").out()).path("paths");
            assertEquals(xdg.resolve("copilot-api").toString(), paths.path("dataDir").asText());
        }

        @Test
        void debugJsonPrintsOnlyJson() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Path home = Files.createTempDirectory("h");
                Run r = cli(env(stub, home), "debug", "--json");
                assertEquals(0, r.exit(), r.err());
                JsonNode j = json(r.out());
                assertEquals(CopilotApi.VERSION, j.path("version").asText());
                assertEquals(home.resolve("github_token").toString(), j.path("paths").path("tokenFile").asText());
                assertFalse(j.path("tokenExists").asBoolean());
                assertEquals(stub.githubUrl(), j.path("urls").path("github").asText());
                assertEquals(stub.githubApiUrl(), j.path("urls").path("githubApi").asText());
                assertEquals(stub.copilotUrl(), j.path("urls").path("copilot").asText());
                assertTrue(j.path("runtime").path("java").isTextual());
            }
        }

        @Test
        void enterpriseUrlSetsBothGitHubUrls() throws Exception {
            Run r = cli(Map.of("COPILOT_API_HOME", Files.createTempDirectory("h").toString()), "debug", "--json", "--enterprise-url", "https://acme.ghe.com/");
            JsonNode urls = json(r.out()).path("urls");
            assertEquals("https://acme.ghe.com", urls.path("github").asText());
            assertEquals("https://api.acme.ghe.com", urls.path("githubApi").asText());
        }

        @Test
        void authRunsTheDeviceFlowAndStoresTheToken() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                stub.devicePolls("authorization_pending", "ok");
                Path home = Files.createTempDirectory("h");
                new CopilotApi.TokenStore(home).save("ghu_old");
                Run r = cli(env(stub, home), "auth");
                assertEquals(0, r.exit(), r.out() + r.err());
                assertTrue(r.out().contains("WDJB-MJHT"), r.out());
                assertTrue(r.out().contains("Copilot access confirmed"), r.out());
                assertFalse((r.out() + r.err()).contains(StubUpstream.VALID_GITHUB_TOKEN), "no token printed without --show-token");
                assertEquals(StubUpstream.VALID_GITHUB_TOKEN, new CopilotApi.TokenStore(home).load().orElseThrow(), "replaced");
                assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(home.resolve("github_token"))));
            }
        }

        /**
         * COPILOT_API_HOME naming an existing directory (here 0755, as /tmp or a home would be): `auth` and later reads leave
         * its mode alone and only the token file is private; a directory copilot-api creates, or its default one, is 0700.
         */
        @Test
        void authTightensOnlyDirectoriesCopilotApiCreatedOrOwns() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Path chosen = Files.createTempDirectory("h");
                Files.setPosixFilePermissions(chosen, PosixFilePermissions.fromString("rwxr-xr-x"));
                Run auth = cli(env(stub, chosen), "auth");
                assertEquals(0, auth.exit(), auth.out() + auth.err());
                assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(chosen.resolve("github_token"))));
                assertEquals("rwxr-xr-x", PosixFilePermissions.toString(Files.getPosixFilePermissions(chosen)), "stored without a chmod");
                Run usage = cli(env(stub, chosen), "check-usage");
                assertEquals(0, usage.exit(), usage.err());
                assertEquals("rwxr-xr-x", PosixFilePermissions.toString(Files.getPosixFilePermissions(chosen)), "read without a chmod");

                Path created = Files.createTempDirectory("h").resolve("new-home");
                assertEquals(0, cli(env(stub, created), "auth").exit());
                assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(created)), "made by copilot-api");

                Path xdg = Files.createTempDirectory("xdg");
                Path own = Files.createDirectory(xdg.resolve("copilot-api"));
                Files.setPosixFilePermissions(own, PosixFilePermissions.fromString("rwxr-xr-x"));
                Map<String, String> defaults = new HashMap<>(stub.env());
                defaults.put("XDG_DATA_HOME", xdg.toString());
                assertEquals(0, cli(defaults, "auth").exit());
                assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(own)), "copilot-api's own directory");
            }
        }

        @Test
        void checkUsagePrintsQuotas() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Map<String, String> env = env(stub, Files.createTempDirectory("h"));
                env.put("GH_TOKEN", StubUpstream.VALID_GITHUB_TOKEN);
                Run r = cli(env, "check-usage");
                assertEquals(0, r.exit(), r.err());
                assertTrue(r.out().contains("Plan: individual"), r.out());
                assertTrue(r.out().contains("2026-12-01"), r.out());
                assertTrue(r.out().matches("(?s).*Premium requests:\\s+120/300 used \\(40\\.0% used, 60\\.0% remaining\\).*"), r.out());
                assertTrue(r.out().matches("(?s).*Chat:\\s+unlimited.*"), r.out());
            }
        }

        @Test
        void failuresAreOneReadableLine() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Map<String, String> env = env(stub, Files.createTempDirectory("h"));
                env.put("GH_TOKEN", "ghu_wrong");
                Run r = cli(env, "check-usage");
                assertEquals(1, r.exit());
                assertTrue(r.err().startsWith("error: ") || r.err().contains("\nerror: "), r.err());
                assertFalse(r.err().contains("\tat "), "no stack trace without --verbose: " + r.err());
                Run bad = cli(env, "start", "--port", "notaport");
                assertEquals(2, bad.exit());
                assertTrue(bad.err().contains("--port"), bad.err());
            }
        }

        /** --verbose logs bodies; neither the GitHub nor the Copilot token may appear in them. */
        @Test
        void verboseLogsBodiesButNoSecrets() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                try (Started server = new Started(env(stub, Files.createTempDirectory("h")), "--verbose")) {
                    String base = server.baseUrl();
                    String body = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"marker-4711\"}]}";
                    HttpResponse<String> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(base + "/v1/chat/completions"))
                        .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(body)).build(), HttpResponse.BodyHandlers.ofString());
                    assertEquals(200, r.statusCode());
                    HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(base + "/token")).build(), HttpResponse.BodyHandlers.ofString());
                    assertNotNull(server.lineWith("GET /token"), server.log.toString());
                    String text = server.log.toString();
                    assertTrue(text.contains("marker-4711"), "bodies are logged with --verbose:\n" + text);
                    assertTrue(text.matches("(?s).*POST /v1/chat/completions gpt-4\\.1 \\[passthrough\\] 200 \\d+ms in=\\d+ out=\\d+.*"), text);
                    assertFalse(text.contains(StubUpstream.VALID_GITHUB_TOKEN), text);
                    assertFalse(text.contains(stub.latestCopilotToken()), text);
                }
            }
        }

        @Test
        void redactionCoversTheTokenShapes() {
            String s = CopilotApi.Redact.secrets("{\"authorization\":\"Bearer tid=abc;exp=1;sku=x\",\"gh\":\"ghu_0123456789abcdefXYZ\","
                + "\"h\":\"token gho_0123456789abcdefXYZ\",\"pat\":\"github_pat_11AAAAAAA0123456789\"}");
            for (String secret : List.of("tid=abc", "0123456789abcdefXYZ", "github_pat_11AAAAAAA0123456789")) {
                assertFalse(s.contains(secret), s);
            }
        }

        @Test
        void manualWithoutATerminalAndWaitWithoutARateLimitAreRefused() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Map<String, String> env = env(stub, Files.createTempDirectory("h"));
                Run manual = cli(env, "start", "--port", "0", "--manual", "--github-token", StubUpstream.VALID_GITHUB_TOKEN);
                assertEquals(2, manual.exit(), "a usage error");
                assertTrue(manual.err().contains("--manual needs a terminal"), manual.err());
                Run wait = cli(env, "start", "--port", "0", "--wait", "--github-token", StubUpstream.VALID_GITHUB_TOKEN);
                assertEquals(2, wait.exit());
                assertTrue(wait.err().contains("--wait goes with --rate-limit"), wait.err());
                assertTrue(wait.err().contains("Try 'copilot-api start --help'"), wait.err());
            }
        }

        @Test
        void bindingBeyondLoopbackWithoutAKeyWarns() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                Map<String, String> env = env(stub, Files.createTempDirectory("h"));
                try (Started open = new Started(env, "--host", "0.0.0.0")) {
                    String warning = open.lineWith("warning: listening on 0.0.0.0 without an API key");
                    assertNotNull(warning, open.log.toString());
                }
                try (Started keyed = new Started(env, "--host", "0.0.0.0", "--api-key", "k")) {
                    keyed.baseUrl();
                    assertFalse(keyed.log.toString().contains("warning:"), keyed.log.toString());
                }
                try (Started local = new Started(env)) {
                    local.baseUrl();
                    assertFalse(local.log.toString().contains("warning:"), local.log.toString());
                }
            }
        }

        @Test
        void startFailsClearlyWhenTheTokenHasNoCopilotSeat() throws Exception {
            try (StubUpstream stub = StubUpstream.start()) {
                stub.tokenExchangeStatus(403);
                Map<String, String> env = env(stub, Files.createTempDirectory("h"));
                Run r = cli(env, "start", "--port", "0", "--github-token", StubUpstream.VALID_GITHUB_TOKEN);
                assertEquals(1, r.exit());
                assertTrue(r.err().contains("no Copilot access"), r.err());
            }
        }
    }

    // ==== The official SDKs, against copilot-api started with the README command ====

    @TestInstance(TestInstance.Lifecycle.PER_CLASS)
    static final class SdkTests {
        static final String MARKER = "copilot-api-tool-loop";
        Path sdk;
        StubUpstream stub;
        SdkRunner.ServerProcess server;

        @BeforeAll
        void up() throws Exception {
            sdk = SdkRunner.repo().resolve("tests").resolve("sdk");
            SdkRunner.npmInstall(sdk);
            stub = StubUpstream.start();
            server = SdkRunner.startServer(stub);
        }

        @AfterAll
        void down() {
            if (server != null) server.close();
            if (stub != null) stub.close();
        }

        void node(String script, Map<String, String> env) throws Exception {
            SdkRunner.Result r = SdkRunner.node(sdk, script, env);
            System.out.print(r.output());
            assertEquals(0, r.exit(), r.output());
        }

        @Test
        void openAiSdk() throws Exception {
            node("openai-e2e.mjs", Map.of("BASE_URL", server.baseUrl() + "/v1"));
        }

        @Test
        void anthropicSdkOnTheNativeRoute() throws Exception {
            node("anthropic-e2e.mjs", Map.of("BASE_URL", server.baseUrl(), "MODEL", "claude-sonnet-4.5"));
        }

        @Test
        void responsesApiOnAResponsesOnlyModel() throws Exception {
            node("responses-e2e.mjs", Map.of("BASE_URL", server.baseUrl() + "/v1", "MODEL", "gpt-5.1-codex", "REASONS", "1"));
        }

        @Test
        void responsesApiOnChatModels() throws Exception {
            node("responses-e2e.mjs", Map.of("BASE_URL", server.baseUrl() + "/v1", "MODEL", "gpt-4.1"));
            node("responses-e2e.mjs", Map.of("BASE_URL", server.baseUrl() + "/v1", "MODEL", "claude-sonnet-4.5"));
        }

        @Test
        void anthropicSdkOnAResponsesOnlyModel() throws Exception {
            node("anthropic-e2e.mjs", Map.of("BASE_URL", server.baseUrl(), "MODEL", "gpt-5.1-codex"));
        }

        @Test
        void claudeCodeToolLoopOnAResponsesOnlyModel() throws Exception {
            claudeCode("gpt-5.1-codex", "responses");
        }

        @Test
        void anthropicSdkOnTheTranslatedRoute() throws Exception {
            node("anthropic-e2e.mjs", Map.of("BASE_URL", server.baseUrl(), "MODEL", "gpt-4.1", "THINKS", "0"));
        }

        @Test
        void claudeCodeToolLoopOnTheTranslatedRoute() throws Exception {
            claudeCode("gpt-4.1", "translated");
        }

        /** Claude Code in print mode runs a Bash tool loop: the stub asks for `echo`, Claude Code runs it, the stub quotes it. */
        @Test
        void claudeCodeToolLoopOnTheNativeRoute() throws Exception {
            claudeCode("claude-sonnet-4-5-20250929", "native");
        }

        /**
         * One Claude Code prompt that hands its work to a subagent, which runs a Bash tool loop: of every upstream
         * call of the session (warm-up, main agent, subagent, tool turns), exactly one goes to Copilot as user.
         */
        @Test
        void claudeCodeWithASubagentSpendsOnePremiumRequest() throws Exception {
            Path home = Files.createTempDirectory("claude-home");
            Map<String, String> env = claudeEnv(home, server.baseUrl(), "claude-sonnet-4-5-20250929");
            stub.clear();
            SdkRunner.Result r = SdkRunner.run(home, env, Duration.ofMinutes(2), sdk.resolve("node_modules/.bin/claude").toString(),
                "-p", "Hand this to a subagent: " + StubUpstream.SUBAGENT_MARKER, "--output-format", "json", "--allowedTools", "Bash,Agent");
            List<String> calls = new ArrayList<>();
            int users = 0;
            boolean subagentStarted = false, bashAnswered = false;
            for (StubUpstream.Recorded rec : stub.requests()) {
                if (!rec.matches("/v1/messages") && !rec.matches("/chat/completions")) continue;
                String initiator = rec.headers().get("x-initiator");
                // the warm-up probe goes as user to a free model on chat completions (Copilot refuses agent there); it costs nothing
                if ("user".equals(initiator) && rec.matches("/v1/messages")) users++;
                JsonNode messages = rec.json().path("messages");
                String last = messages.isEmpty() ? "" : messages.get(messages.size() - 1).toString();
                subagentStarted |= messages.size() == 1 && last.contains("Subagent task");
                bashAnswered |= last.contains("tool_result") && last.contains(MARKER) && rec.body().contains("Subagent task");
                calls.add(initiator + " " + rec.json().path("model").asText() + " messages=" + messages.size() + " last: "
                    + last.substring(Math.max(0, last.length() - 120)));
            }
            String session = String.join("\n", calls);
            String last = r.output().strip();
            last = last.substring(last.lastIndexOf('\n') + 1);
            assertEquals(0, r.exit(), r.output());
            assertFalse(json(last).path("is_error").asBoolean(true), r.output());
            assertTrue(subagentStarted, "the subagent started with the prompt the main agent gave it:\n" + session);
            assertTrue(bashAnswered, "the subagent's Bash tool ran and its output went back to it:\n" + session);
            assertEquals(1, users, "exactly one call of the session went as user:\n" + session);
            String log = Files.readString(server.log);
            assertTrue(log.contains("free: subagent") && log.contains("free: continuation") && log.contains(" premium 1"),
                "the request log says what each call cost:\n" + log);
        }

        /**
         * Claude Code with a subagent against today's Copilot (a usage-based account that validates X-Initiator) on a
         * Claude model, a GPT chat model and a responses-only model: the session finishes, the subagent runs its Bash
         * loop, and Copilot never answers 400 where copilot-api chose the initiator (chat and /responses), at most
         * once on /v1/messages, where a refusal of agent is learned.
         */
        @Test
        void claudeCodeWithASubagentOnTodaysCopilot() throws Exception {
            try (StubUpstream today = StubUpstream.start().accountKind(StubUpstream.AccountKind.USAGE_BASED);
                 SdkRunner.ServerProcess server = SdkRunner.startServer(today)) {
                for (String model : List.of("claude-sonnet-4-5-20250929", "gpt-4.1", "gpt-5.1-codex")) {
                    Path home = Files.createTempDirectory("claude-home");
                    Map<String, String> env = claudeEnv(home, server.baseUrl(), model);
                    today.clear();
                    SdkRunner.Result r = SdkRunner.run(home, env, Duration.ofMinutes(2), sdk.resolve("node_modules/.bin/claude").toString(),
                        "-p", "Hand this to a subagent: " + StubUpstream.SUBAGENT_MARKER, "--output-format", "json", "--allowedTools", "Bash,Agent");
                    List<String> calls = new ArrayList<>();
                    boolean subagentRan = false;
                    int refusedOnMessages = 0, refusedElsewhere = 0;
                    for (StubUpstream.Recorded rec : today.requests()) {
                        boolean messages = rec.matches("/v1/messages");
                        if (!messages && !rec.matches("/chat/completions") && !rec.matches("/responses")) continue;
                        subagentRan |= rec.body().contains("Subagent task") && rec.body().contains(MARKER);
                        if (rec.status() == 400) {
                            if (messages) refusedOnMessages++;
                            else refusedElsewhere++;
                        }
                        JsonNode turns = rec.json().has("messages") ? rec.json().path("messages") : rec.json().path("input");
                        String lastTurn = turns.isArray() && !turns.isEmpty() ? turns.get(turns.size() - 1).toString() : turns.toString();
                        calls.add(rec.status() + " " + rec.path() + " " + rec.header("x-initiator") + " " + rec.json().path("model").asText()
                            + " marker: " + rec.body().contains(StubUpstream.SUBAGENT_MARKER) + " tools: "
                            + rec.json().path("tools").findValuesAsText("name") + " last: " + lastTurn.substring(Math.max(0, lastTurn.length() - 160)));
                    }
                    String session = model + ":\n" + String.join("\n", calls);
                    String last = r.output().strip();
                    last = last.substring(last.lastIndexOf('\n') + 1);
                    assertEquals(0, r.exit(), session + "\n" + r.output());
                    assertFalse(json(last).path("is_error").asBoolean(true), session + "\n" + r.output());
                    assertTrue(subagentRan, "the subagent's Bash output went back to it:\n" + session);
                    assertEquals(0, refusedElsewhere, "no 400 where copilot-api chose the initiator:\n" + session);
                    assertTrue(refusedOnMessages <= 1, "a refusal on /v1/messages is learned once:\n" + session);
                }
            }
        }

        /**
         * Claude Code in print mode: a prompt with a Bash tool loop, then /compact on the same session (--continue).
         * Exactly one call bills (the person's prompt); the compaction calls go to the cheap model (a free one on this
         * legacy account) and are recorded as background, named in the log line.
         */
        @Test
        void claudeCodePrintModeBillsOnePromptAndSendsItsCompactionToTheCheapModel() throws Exception {
            Path home = Files.createTempDirectory("claude-home");
            Map<String, String> env = claudeEnv(home, server.baseUrl(), "claude-sonnet-4-5-20250929");
            String claude = sdk.resolve("node_modules/.bin/claude").toString();
            stub.clear();
            double before = stats().path("premium").path("units").asDouble();
            long backgroundBefore = stats().path("background").path("by_kind").path("compaction").asLong();
            SdkRunner.Result prompt = SdkRunner.run(home, env, Duration.ofMinutes(2), claude,
                "-p", "Use the Bash tool to print a marker, then tell me what it printed.", "--output-format", "json", "--allowedTools", "Bash");
            assertEquals(0, prompt.exit(), prompt.output());
            SdkRunner.Result compact = SdkRunner.run(home, env, Duration.ofMinutes(2), claude, "-p", "--continue", "/compact", "--output-format", "json");
            assertEquals(0, compact.exit(), compact.output());
            List<String> calls = new ArrayList<>();
            int compactions = 0, users = 0;
            for (StubUpstream.Recorded rec : stub.requests()) {
                if (!rec.matches("/v1/messages") && !rec.matches("/chat/completions")) continue;
                boolean compaction = rec.body().contains(CopilotApi.Chat.BackgroundCalls.COMPACTION_PROMPTS.get(0));
                if (compaction) {
                    compactions++;
                    assertEquals("gpt-4.1", rec.json().path("model").asText(), "the compaction went to the free model");
                }
                // gpt-4.1 is free on the stub's legacy account: a user call to it costs nothing
                if ("user".equals(rec.header("x-initiator")) && !rec.json().path("model").asText().equals("gpt-4.1")) users++;
                calls.add(rec.path() + " " + rec.header("x-initiator") + " " + rec.json().path("model").asText() + " compaction: " + compaction);
            }
            String session = String.join("\n", calls);
            assertTrue(compactions >= 1, "Claude Code sent its compaction:\n" + session);
            assertEquals(1, users, "one billed call, the person's prompt:\n" + session);
            JsonNode stats = stats();
            assertEquals(before + 1, stats.path("premium").path("units").asDouble(), 0.0001, session + "\n" + stats);
            assertEquals(backgroundBefore + compactions, stats.path("background").path("by_kind").path("compaction").asLong(), stats.toString());
            String log = Files.readString(server.log);
            assertTrue(log.contains("-> gpt-4.1 [translated, background: compaction]"), "the log line says so:\n" + log);
        }

        JsonNode stats() throws Exception {
            return json(HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(server.baseUrl() + "/stats")).build(),
                HttpResponse.BodyHandlers.ofString()).body());
        }

        /** Claude Code's environment against copilot-api at baseUrl: its own HOME, the main model, haiku as the small one. */
        static Map<String, String> claudeEnv(Path home, String baseUrl, String model) {
            return new HashMap<>(Map.of(
                "HOME", home.toString(),
                "ANTHROPIC_BASE_URL", baseUrl,
                "ANTHROPIC_AUTH_TOKEN", "copilot-api",
                "ANTHROPIC_MODEL", model,
                "ANTHROPIC_SMALL_FAST_MODEL", "claude-haiku-4-5-20251001",
                "ANTHROPIC_DEFAULT_HAIKU_MODEL", "claude-haiku-4-5-20251001",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"));
        }

        void claudeCode(String model, String route) throws Exception {
            Path home = Files.createTempDirectory("claude-home");
            Map<String, String> env = claudeEnv(home, server.baseUrl(), model);
            stub.clear();
            SdkRunner.Result r = SdkRunner.run(home, env, Duration.ofMinutes(3), sdk.resolve("node_modules/.bin/claude").toString(),
                "-p", "Use the Bash tool to print a marker, then tell me what it printed.", "--output-format", "json", "--allowedTools", "Bash");
            String last = r.output().strip();
            last = last.substring(last.lastIndexOf('\n') + 1);
            assertEquals(0, r.exit(), r.output());
            JsonNode result = json(last);
            assertFalse(result.path("is_error").asBoolean(true), r.output());
            assertTrue(result.path("result").asText().contains("Tool said: " + MARKER), "the tool ran and its output came back: " + last);
            assertTrue(result.path("num_turns").asInt() >= 2, last);
            String path = switch (route) {
                case "native" -> "/v1/messages";
                case "responses" -> "/responses";
                default -> "/chat/completions";
            };
            assertTrue(stub.count(path) >= 2, route + " route used for both turns; requests: " + stub.count(path));
        }
    }

    /** Runs npm and node, and copilot-api as users start it: ./jbang copilot-api.java start. */
    /** What people who run services ask for: a jar. Both JBang exports, run with plain java -jar against the stub. */
    static final class ExportTests {
        static String java() {
            return Path.of(System.getProperty("java.home"), "bin", "java").toString();
        }

        void exportAndServe(String kind) throws Exception {
            Path out = Files.createTempDirectory("export");
            SdkRunner.Result r = SdkRunner.run(SdkRunner.repo(), Map.of(), Duration.ofMinutes(5), "./jbang", "export", kind, "--force",
                "-O", out.resolve("copilot-api.jar").toString(), "copilot-api.java");
            assertEquals(0, r.exit(), r.output());
            serves(out, java(), "-jar", "copilot-api.jar");
        }

        /** The command, started in dir against a stub, lists the models and has its store (SQLite's native library loads). */
        static void serves(Path dir, String... command) throws Exception {
            try (StubUpstream stub = StubUpstream.start(); SdkRunner.ServerProcess server = SdkRunner.startServer(stub, dir, command)) {
                HttpResponse<String> models = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(server.baseUrl() + "/v1/models"))
                    .build(), HttpResponse.BodyHandlers.ofString());
                assertEquals(200, models.statusCode(), models.body());
                assertTrue(models.body().contains("\"gpt-4.1\""), models.body());
                HttpResponse<String> stats = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(server.baseUrl() + "/stats"))
                    .build(), HttpResponse.BodyHandlers.ofString());
                assertEquals("ok", json(stats.body()).path("store").path("state").asText(), "SQLite's native library loads from the jar: " + stats.body());
            }
        }

        /**
         * `service install` on Linux, in a temporary home: the unit passes systemd-analyze verify, its ExecStart line
         * really starts a server that answers (with the key from the owner-only environment file), status tells the
         * port, and uninstall removes everything install wrote.
         */
        @Test
        void aServiceUnitStartsTheServerAndUninstallRemovesEverything() throws Exception {
            Path out = Files.createTempDirectory("export");
            Path jar = out.resolve("copilot-api.jar");
            SdkRunner.Result export = SdkRunner.run(SdkRunner.repo(), Map.of(), Duration.ofMinutes(5), "./jbang", "export", "fatjar", "--force",
                "-O", jar.toString(), "copilot-api.java");
            assertEquals(0, export.exit(), export.output());
            int port;
            try (java.net.ServerSocket s = new java.net.ServerSocket(0)) {
                port = s.getLocalPort();
            }
            try (StubUpstream stub = StubUpstream.start()) {
                Path home = Files.createTempDirectory("service-home");
                Map<String, String> env = new HashMap<>(stub.env());
                env.put("HOME", home.toString());
                env.put("XDG_CONFIG_HOME", home.resolve(".config").toString());
                env.put("COPILOT_API_HOME", home.resolve("data").toString());
                env.put("NO_PROXY", "example.invalid");
                env.put("UNRELATED_SECRET", "not-for-the-service");
                String[] start = {"--port", String.valueOf(port), "--api-key", "k-service", "--github-token", StubUpstream.VALID_GITHUB_TOKEN};

                SdkRunner.Result dry = service(out, env, "install", "--dry-run", start);
                assertEquals(0, dry.exit(), dry.output());
                assertTrue(dry.output().contains("ExecStart=" + java() + " -XX:+UseSerialGC -Xms32m -Xmx512m -jar "
                    + home.resolve("data/copilot-api.jar") + " start --port " + port + "\n"), dry.output());
                assertFalse(dry.output().contains("k-service") || dry.output().contains(StubUpstream.VALID_GITHUB_TOKEN), "no secret shown: " + dry.output());
                assertTrue(dry.output().contains("COPILOT_API_KEYS=***") && dry.output().contains("NO_PROXY=example.invalid"), dry.output());
                assertFalse(dry.output().contains("UNRELATED_SECRET"), "only the allow-listed variables: " + dry.output());
                assertFalse(Files.exists(home.resolve(".config")), "--dry-run writes nothing");
                verify(dry.output());

                SdkRunner.Result install = service(out, env, "install", "--no-start", start);
                assertEquals(0, install.exit(), install.output());
                Path unit = home.resolve(".config/systemd/user/copilot-api.service");
                Path envFile = home.resolve(".config/copilot-api/service.env");
                assertTrue(Files.isRegularFile(unit) && Files.isRegularFile(home.resolve("data/copilot-api.jar")), install.output());
                assertEquals("rw-------", java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(envFile)));
                assertFalse(Files.readString(unit).contains("k-service"), "the key is in the environment file, not the unit");

                Map<String, String> serviceEnv = new HashMap<>(stub.env());
                serviceEnv.put("HOME", home.toString());
                for (String line : Files.readAllLines(envFile)) {
                    if (!line.startsWith("#") && line.contains("=")) serviceEnv.put(line.substring(0, line.indexOf('=')), line.substring(line.indexOf('=') + 1));
                }
                String exec = Files.readString(unit).lines().filter(l -> l.startsWith("ExecStart=")).findFirst().orElseThrow().substring("ExecStart=".length());
                ProcessBuilder pb = new ProcessBuilder(exec.split(" ")).redirectErrorStream(true).redirectOutput(out.resolve("service.log").toFile());
                pb.environment().clear();
                pb.environment().putAll(serviceEnv);
                Process server = pb.start();
                try {
                    HttpClient client = HttpClient.newHttpClient();
                    HttpRequest models = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/v1/models")).header("x-api-key", "k-service").build();
                    HttpResponse<String> answer = null;
                    for (long end = System.nanoTime() + Duration.ofMinutes(1).toNanos(); answer == null && System.nanoTime() < end && server.isAlive(); ) {
                        try {
                            answer = client.send(models, HttpResponse.BodyHandlers.ofString());
                        } catch (IOException notYet) {
                            Thread.sleep(200);
                        }
                    }
                    assertNotNull(answer, "the unit's command line started a server: " + Files.readString(out.resolve("service.log")));
                    assertEquals(200, answer.statusCode(), answer.body());
                    assertTrue(answer.body().contains("\"gpt-4.1\""), answer.body());
                    assertEquals(401, client.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/v1/models")).build(),
                        HttpResponse.BodyHandlers.ofString()).statusCode(), "the key from the environment file is required");
                } finally {
                    server.destroy();
                    server.waitFor(10, TimeUnit.SECONDS);
                }

                SdkRunner.Result status = service(out, env, "status");
                assertTrue(status.output().contains(unit.toString()) && status.output().contains("port " + port), status.output());

                SdkRunner.Result uninstall = service(out, env, "uninstall", "--no-start");
                assertEquals(0, uninstall.exit(), uninstall.output());
                try (Stream<Path> left = Files.walk(home.resolve(".config"))) {
                    assertEquals(List.of(), left.filter(Files::isRegularFile).toList(), "uninstall removed every file install wrote");
                }
                assertFalse(Files.exists(home.resolve("data/copilot-api.jar")));
                assertEquals(3, service(out, env, "status").exit(), "not installed");
                noManagerIsOneLine(out, env, start);
            }
        }

        /**
         * `service install` run through JBang (the script, or the `jbang app install` launcher) has no exported jar to copy:
         * it bundles the class path JBang started it with into one jar in the data directory. After an update (here: the
         * script with a new version), install again bundles the new code, and the unit stays as it was. The bundled jar
         * serves against the stub.
         */
        @Test
        void installFromTheScriptBundlesTheJarAndBundlesItAgainAfterAnUpdate() throws Exception {
            Path src = Files.createTempDirectory("script");
            Path script = src.resolve("copilot-api.java");
            Files.copy(SdkRunner.repo().resolve("copilot-api.java"), script);
            Path home = Files.createTempDirectory("service-home");
            Map<String, String> env = Map.of("XDG_CONFIG_HOME", home.resolve(".config").toString(), "COPILOT_API_HOME", home.resolve("data").toString());
            Path jar = home.resolve("data/copilot-api.jar");
            Path unit = home.resolve(".config/systemd/user/copilot-api.service");

            SdkRunner.Result first = SdkRunner.run(SdkRunner.repo(), env, Duration.ofMinutes(5), "./jbang", script.toString(), "service", "install", "--no-start");
            assertEquals(0, first.exit(), first.output());
            assertTrue(SdkRunner.run(home, Map.of(), Duration.ofMinutes(1), java(), "-jar", jar.toString(), "--version").output()
                .contains("copilot-api " + CopilotApi.VERSION + "\n"), "the bundled jar runs on its own");
            String unitText = Files.readString(unit);
            assertTrue(unitText.contains(" -jar " + jar + " start\n"), unitText);

            Files.writeString(script, Files.readString(script).replace("String VERSION = \"" + CopilotApi.VERSION + "\"", "String VERSION = \"9.9.9-updated\""));
            SdkRunner.Result second = SdkRunner.run(SdkRunner.repo(), env, Duration.ofMinutes(5), "./jbang", script.toString(), "service", "install", "--no-start");
            assertEquals(0, second.exit(), second.output());
            assertTrue(SdkRunner.run(home, Map.of(), Duration.ofMinutes(1), java(), "-jar", jar.toString(), "--version").output()
                .contains("copilot-api 9.9.9-updated\n"), "install bundled the updated code");
            assertEquals(unitText, Files.readString(unit), "the unit is unchanged: it names the jar, not a version");

            serves(home, java(), "-jar", jar.toString());
        }

        static SdkRunner.Result service(Path dir, Map<String, String> env, String action, String... args) throws Exception {
            List<String> cmd = new ArrayList<>(List.of(java(), "-jar", "copilot-api.jar", "service", action));
            cmd.addAll(List.of(args));
            return SdkRunner.run(dir, env, Duration.ofMinutes(1), cmd.toArray(String[]::new));
        }

        static SdkRunner.Result service(Path dir, Map<String, String> env, String action, String flag, String[] start) throws Exception {
            List<String> args = new ArrayList<>(List.of(flag));
            args.addAll(List.of(start));
            return service(dir, env, action, args.toArray(String[]::new));
        }

        /** systemd-analyze verify on the printed unit, where the tool is installed. */
        static void verify(String dryRun) throws Exception {
            if (!Files.isExecutable(Path.of("/usr/bin/systemd-analyze"))) {
                System.out.println("no systemd-analyze here: the unit was not verified");
                return;
            }
            String unit = dryRun.substring(dryRun.indexOf("[Unit]"), dryRun.indexOf("\n# ", dryRun.indexOf("[Unit]")) + 1);
            Path dir = Files.createTempDirectory("unit");
            Files.writeString(dir.resolve("copilot-api.service"), unit);
            SdkRunner.Result r = SdkRunner.run(dir, Map.of(), Duration.ofMinutes(1), "systemd-analyze", "verify", dir.resolve("copilot-api.service").toString());
            System.out.println("systemd-analyze verify: exit " + r.exit() + "\n" + r.output());
            assertEquals(0, r.exit(), r.output());
        }

        /** Without a systemd user manager (this container), install says so in one line, exits non-zero and writes nothing. */
        static void noManagerIsOneLine(Path dir, Map<String, String> env, String[] start) throws Exception {
            SdkRunner.Result bus = SdkRunner.run(dir, Map.of(), Duration.ofSeconds(30), "sh", "-c", "systemctl --user show-environment");
            if (bus.exit() == 0) return;
            SdkRunner.Result r = service(dir, env, "install", "--port", start[1]);
            assertEquals(1, r.exit(), r.output());
            assertEquals(1, r.output().strip().lines().count(), r.output());
            assertTrue(r.output().contains("--no-start"), r.output());
            assertFalse(Files.exists(Path.of(env.get("XDG_CONFIG_HOME"), "systemd", "user", "copilot-api.service")), "nothing written");
            assertFalse(Files.exists(Path.of(env.get("XDG_CONFIG_HOME"), "copilot-api")), "nothing written, and uninstall left no folder of ours");
        }

        @Test
        void aFatJarRunsWithJavaJar() throws Exception {
            exportAndServe("fatjar");
        }

        @Test
        void aPortableJarRunsWithItsLibFolder() throws Exception {
            exportAndServe("portable");
        }
    }

    static final class SdkRunner {
        record Result(int exit, String output) {}

        static Path repo() {
            return CopilotApiTests.fixtures("chat").getParent().getParent().getParent();
        }

        /**
         * npm ci unless node_modules already holds every dependency of package.json at its pinned version (one added
         * since included). A folder without a lock file (tests/opencode: one exactly pinned package whose platform
         * binaries are optional, and a registry need not serve every platform's, which a lock file would demand)
         * gets npm install without writing one.
         */
        static void npmInstall(Path dir) throws Exception {
            if (installed(dir)) return;
            String[] command = Files.exists(dir.resolve("package-lock.json"))
                ? new String[] {"npm", "ci", "--no-audit", "--no-fund"}
                : new String[] {"npm", "install", "--no-package-lock", "--no-audit", "--no-fund"};
            Result r = run(dir, Map.of(), Duration.ofMinutes(5), command);
            assertEquals(0, r.exit(), String.join(" ", command) + " failed:\n" + r.output());
        }

        static boolean installed(Path dir) throws IOException {
            JsonNode deps = json(Files.readString(dir.resolve("package.json"))).path("dependencies");
            for (var dep : deps.properties()) {
                Path manifest = dir.resolve("node_modules").resolve(dep.getKey()).resolve("package.json");
                if (!Files.exists(manifest) || !json(Files.readString(manifest)).path("version").asText().equals(dep.getValue().asText())) return false;
            }
            return true;
        }

        static Result node(Path dir, String script, Map<String, String> env) throws Exception {
            return run(dir, env, Duration.ofMinutes(3), "node", script);
        }

        static Result run(Path dir, Map<String, String> env, Duration timeout, String... cmd) throws Exception {
            Path log = Files.createTempFile("run", ".log");
            ProcessBuilder pb = new ProcessBuilder(cmd).directory(dir.toFile()).redirectErrorStream(true).redirectOutput(log.toFile());
            pb.environment().putAll(env);
            Process p = pb.start();
            p.getOutputStream().close();
            if (!p.waitFor(timeout.toSeconds(), TimeUnit.SECONDS)) {
                p.destroyForcibly();
                return new Result(-1, Files.readString(log) + "\n(timed out)");
            }
            return new Result(p.exitValue(), Files.readString(log));
        }

        /** copilot-api in its own process, started the way the README says, on a free port. */
        static final class ServerProcess implements AutoCloseable {
            final Process process;
            final int port;
            final Path log;

            ServerProcess(Process process, int port, Path log) {
                this.process = process;
                this.port = port;
                this.log = log;
            }

            String baseUrl() {
                return "http://127.0.0.1:" + port;
            }

            @Override
            public void close() {
                process.destroy();
                try {
                    if (!process.waitFor(10, TimeUnit.SECONDS)) process.destroyForcibly();
                } catch (InterruptedException e) {
                    process.destroyForcibly();
                }
            }
        }

        static ServerProcess startServer(StubUpstream stub) throws Exception {
            return startServer(stub, repo(), "./jbang", "copilot-api.java");
        }

        /** The given command (the script, or a jar) with start --port P --github-token T appended, in dir. */
        static ServerProcess startServer(StubUpstream stub, Path dir, String... command) throws Exception {
            int port;
            try (java.net.ServerSocket s = new java.net.ServerSocket(0)) {
                port = s.getLocalPort();
            }
            Path log = Files.createTempFile("copilot-api", ".log");
            List<String> cmd = new ArrayList<>(List.of(command));
            cmd.addAll(List.of("start", "--port", String.valueOf(port), "--github-token", StubUpstream.VALID_GITHUB_TOKEN));
            ProcessBuilder pb = new ProcessBuilder(cmd).directory(dir.toFile()).redirectErrorStream(true).redirectOutput(log.toFile());
            pb.environment().putAll(stub.env());
            pb.environment().put("COPILOT_API_HOME", Files.createTempDirectory("h").toString());
            Process p = pb.start();
            p.getOutputStream().close();
            ServerProcess server = new ServerProcess(p, port, log);
            HttpClient client = HttpClient.newHttpClient();
            long end = System.nanoTime() + Duration.ofMinutes(3).toNanos();
            while (System.nanoTime() < end) {
                if (!p.isAlive()) fail("copilot-api exited early:\n" + Files.readString(log));
                try {
                    HttpResponse<String> r = client.send(HttpRequest.newBuilder(URI.create(server.baseUrl() + "/")).build(),
                        HttpResponse.BodyHandlers.ofString());
                    if (r.statusCode() == 200) return server;
                } catch (IOException notYet) {
                    Thread.sleep(250);
                }
            }
            server.close();
            throw new AssertionError("copilot-api did not start:\n" + Files.readString(log));
        }
    }
}
