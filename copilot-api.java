///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DESCRIPTION Turn a GitHub Copilot subscription into a local OpenAI- and Anthropic-compatible API server.
//DEPS com.fasterxml.jackson.core:jackson-databind:2.20.1
//DEPS com.knuddels:jtokkit:1.1.0
//DEPS info.picocli:picocli:4.7.7
//DEPS io.javalin:javalin:7.2.3
//DEPS org.eclipse.jetty:jetty-client:12.1.12
//DEPS org.slf4j:slf4j-simple:2.0.17
//DEPS org.xerial:sqlite-jdbc:3.53.4.0
// A small long-running server: Serial GC and a heap that starts at 32 MB and grows only as needed keep it near
// 210 MB resident under load (G1 sized to a quarter of RAM reached 500-970 MB); the 512 MB cap leaves room for a
// body near the 100 MB limit. The CDS line archives the loaded classes on the first run and maps them after.
//JAVA_OPTIONS -XX:+UseSerialGC -Xms32m -Xmx512m
// The source is UTF-8 whatever the locale (a POSIX locale made javac read it as ASCII and fail).
//COMPILE_OPTIONS -encoding UTF-8
//CDS

package copilotapi;

import static java.nio.charset.StandardCharsets.UTF_8;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.javalin.Javalin;
import io.javalin.compression.CompressionStrategy;
import io.javalin.http.Context;
import io.javalin.http.Handler;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.URLEncoder;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.TreeMap;
import java.util.UUID;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.function.Supplier;
import java.util.regex.Pattern;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine;

import copilotapi.CopilotApi.Anthropic.*;
import copilotapi.CopilotApi.Chat.*;
import copilotapi.CopilotApi.Gemini.*;
import copilotapi.CopilotApi.Responses.*;
import copilotapi.CopilotApi.ErrorShapes.*;
import copilotapi.CopilotApi.Operator.*;
import copilotapi.CopilotApi.Routes.*;
import copilotapi.CopilotApi.Serving.*;
import copilotapi.CopilotApi.Streaming.*;

/**
 * copilot-api: a local server that speaks the OpenAI, Anthropic and Gemini APIs on top of a GitHub Copilot plan.
 *
 * <p>Map of this file (search for "====" to print the outline):
 * <ol>
 *   <li>CLI commands: {@code start}, {@code auth}, {@code check-usage}, {@code debug}, {@code setup}, {@code service}, {@code generate-completion}</li>
 *   <li>Configuration: URLs, data directory, options, editor versions</li>
 *   <li>Server and routes, in five namespaces:
 *     <ol>
 *       <li>{@code Serving}: the composition root ({@code App}), Javalin, the per-request record ({@code Exchange}) and
 *           its log line, the browser guard, request checks</li>
 *       <li>{@code Operator}: keys, pacing, approval, stats, premium billing with its subagent memory and the choice of
 *           the cheap model for background calls, the cost of a request in AI Credits with its ledger and --budget
 *           ({@code Cost}), the dashboard</li>
 *       <li>{@code Routes}: the one request pipeline ({@code ModelCall}: admit, reserve, send, settle, record) and a
 *           class per inbound API (OpenAI, Anthropic, Responses with its stored state, Gemini)</li>
 *       <li>{@code Streaming}: one loop ({@code Relay.run}) over {@code EventSource} items with the machines
 *           {@code ChatRelay}, {@code NativeRelay} and {@code TranslatedRelay} (a whole answer is the same machine
 *           folded), the shared {@code ChatChunks} vocabulary, SSE frames, the client watch</li>
 *       <li>{@code ErrorShapes}: each API's error bodies and Copilot's error hints</li>
 *     </ol></li>
 *   <li>Store and history: one SQLite database (stored Responses answers and items, the request history), one writer
 *       thread that opens it in the background and commits what is queued together; the history's queries</li>
 *   <li>Translators: pure JSON-in/JSON-out code in four namespaces: {@code Chat} (who initiated a turn and which calls
 *       are background work, for billing; the chat-answer normalisers; model limits; embeddings), {@code Anthropic}
 *       (Messages to chat and back with the stream state machine, model-name resolution, native-request cleaning,
 *       token counting), {@code Responses} (Responses to chat and back, both stream machines, output items,
 *       reasoning) and {@code Gemini} (generateContent to chat and back with its stream machine, thought signatures,
 *       the model list, Google's error shape)</li>
 *   <li>Copilot client: the chat pivot ({@code ChatUpstream}, the one place that picks /chat/completions or
 *       /responses), headers, timeouts, token lifecycle, model catalog (and the identity that reads it), the usage
 *       limits Copilot reports, upstream calls, the upstream event sources and the heartbeat that keeps silent
 *       streams alive ({@code LiveStreams}); then the upstream transport: Jetty's HTTP client (HTTP/1.1, with
 *       {@code BodyStream}, the response body reader), proxies, SSE reading</li>
 *   <li>GitHub auth: token sources, token file, device flow, usage</li>
 *   <li>Errors: typed exceptions shared by every surface</li>
 *   <li>Small utilities: JSON, ports, clipboard, threads, POSIX permissions, redaction, ids</li>
 * </ol>
 */
@Command(
    name = "copilot-api",
    mixinStandardHelpOptions = true,
    versionProvider = CopilotApi.VersionProvider.class,
    description = "Turn a GitHub Copilot subscription into a local OpenAI- and Anthropic-compatible API server.",
    subcommands = {
        CopilotApi.StartCommand.class,
        CopilotApi.AuthCommand.class,
        CopilotApi.CheckUsageCommand.class,
        CopilotApi.DebugCommand.class,
        CopilotApi.SetupCommand.class,
        CopilotApi.ServiceCommand.class,
        picocli.AutoComplete.GenerateCompletion.class,
    })
class CopilotApi implements Callable<Integer> {

    static final String VERSION = "0.1.0";
    static final int DEFAULT_PORT = 4141;
    static final String DEFAULT_DATA_DIR = "~/.local/share/copilot-api";

    static final ObjectMapper JSON = new ObjectMapper().disable(SerializationFeature.FAIL_ON_EMPTY_BEANS);

    @CommandLine.Spec CommandLine.Model.CommandSpec spec;

    public static void main(String... args) {
        Server.tellJettyTheCacheLine();
        System.exit(commandLine().execute(args));
    }

    static CommandLine commandLine() {
        CommandLine cmd = new CommandLine(new CopilotApi())
            .setExecutionExceptionHandler(CopilotApi::reportFailure)
            .setParameterExceptionHandler(CopilotApi::reportBadArguments)
            .setCaseInsensitiveEnumValuesAllowed(true);
        // the shared options a command would silently ignore are not offered there
        withoutOptions(cmd.getSubcommands().get("auth"), "--github-token");
        withoutOptions(cmd.getSubcommands().get("check-usage"), "--account-type", "--show-token");
        withoutOptions(cmd.getSubcommands().get("debug"), "--github-token", "--show-token", "--verbose");
        return cmd;
    }

    private static void withoutOptions(CommandLine command, String... names) {
        for (String name : names) command.getCommandSpec().remove(command.getCommandSpec().findOption(name));
    }

    @Override
    public Integer call() {
        spec.commandLine().usage(System.out);
        return 0;
    }

    /** One readable line per failure; the stack trace only with --verbose. */
    static int reportFailure(Exception e, CommandLine cmd, CommandLine.ParseResult parsed) {
        boolean verbose = parsed.subcommand() != null && parsed.subcommand().hasMatchedOption("--verbose");
        String message = e instanceof UserFacingException ? e.getMessage() : describe(e);
        cmd.getErr().println(cmd.getColorScheme().errorText("error: " + message));
        if (verbose) e.printStackTrace(cmd.getErr());
        else if (!(e instanceof UserFacingException)) cmd.getErr().println("(run again with --verbose for details)");
        return 1;
    }

    /** A mistyped command line: the problem and where to look, not the whole usage text. */
    static int reportBadArguments(CommandLine.ParameterException e, String[] args) {
        CommandLine cmd = e.getCommandLine();
        cmd.getErr().println(cmd.getColorScheme().errorText("error: " + e.getMessage()));
        CommandLine.UnmatchedArgumentException.printSuggestions(e, cmd.getErr());
        cmd.getErr().println("Try '" + cmd.getCommandSpec().qualifiedName() + " --help' for the options.");
        return 2;
    }

    static String describe(Throwable e) {
        String m = e.getMessage();
        return m == null || m.isBlank() ? e.getClass().getSimpleName() : m;
    }

    // ==== 1. CLI commands ====

    static final class VersionProvider implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            return new String[] {"copilot-api " + VERSION,
                "Java " + System.getProperty("java.version") + " (" + System.getProperty("java.vendor") + ")"};
        }
    }

    /** Options every subcommand that talks to GitHub shares. */
    static final class CommonOptions {
        @Option(names = {"-v", "--verbose"}, description = "Log request and response bodies (secrets redacted) and show stack traces.")
        boolean verbose;

        @Option(names = {"-a", "--account-type"}, paramLabel = "TYPE", defaultValue = "individual",
            description = "Copilot plan type: ${COMPLETION-CANDIDATES} (default: ${DEFAULT-VALUE}).")
        AccountType accountType;

        @Option(names = {"-g", "--github-token"}, paramLabel = "TOKEN",
            description = "GitHub token to use instead of the stored one (also env COPILOT_API_GITHUB_TOKEN, GH_TOKEN, GITHUB_TOKEN).")
        String githubToken;

        @Option(names = "--enterprise-url", paramLabel = "HOST",
            description = "GitHub Enterprise host: acme.ghe.com (Enterprise Cloud with data residency; API on api.acme.ghe.com), or a GitHub Enterprise Server host (API under /api/v3).")
        String enterpriseUrl;

        @Option(names = "--show-token", description = "Print GitHub and Copilot tokens when they are fetched or refreshed.")
        boolean showToken;

        @Option(names = "--proxy-env", description = "Send upstream calls through HTTPS_PROXY / HTTP_PROXY, honouring NO_PROXY.")
        boolean proxyEnv;

        @CommandLine.Spec(CommandLine.Spec.Target.MIXEE) CommandLine.Model.CommandSpec command;

        /** The settings in effect; an option value that cannot work is a usage error (exit 2), like a parse error. */
        Settings settings() {
            Logs.configure(verbose);
            try {
                return Settings.from(this, System.getenv());
            } catch (UserFacingException e) {
                throw new CommandLine.ParameterException(command.commandLine(), e.getMessage());
            }
        }
    }

    @Command(name = "start", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
        description = "Start the API server (logs in first when no GitHub token is known).")
    static final class StartCommand implements Callable<Integer> {
        @Mixin CommonOptions common;

        @CommandLine.Spec CommandLine.Model.CommandSpec spec;

        @Option(names = {"-p", "--port"}, paramLabel = "PORT", defaultValue = "" + DEFAULT_PORT, description = "Port to listen on (default: ${DEFAULT-VALUE}).")
        int port;

        @Option(names = "--host", paramLabel = "ADDRESS", defaultValue = "127.0.0.1", description = "Address to bind (default: ${DEFAULT-VALUE}).")
        String host;

        @Option(names = "--api-key", paramLabel = "KEY",
            description = "Require this key (x-api-key or Authorization: Bearer) on every route but the dashboard page; repeatable (also env COPILOT_API_KEYS=k1,k2).")
        List<String> apiKeys;

        @Option(names = "--allowed-host", paramLabel = "NAME",
            description = "Also serve requests whose Host header names NAME (besides localhost, IP addresses and --host); repeatable (also env COPILOT_API_ALLOWED_HOSTS=a,b).")
        List<String> allowedHosts;

        @Option(names = "--cors-origin", paramLabel = "ORIGIN",
            description = "Let web pages from ORIGIN (e.g. http://localhost:3000) call the API, with CORS; repeatable (also env COPILOT_API_CORS_ORIGINS=a,b).")
        List<String> corsOrigins;

        @Option(names = {"-r", "--rate-limit"}, paramLabel = "SECONDS",
            description = "At least this many seconds between requests that invoke a model.")
        Double rateLimit;

        @Option(names = {"-w", "--wait"}, description = "With --rate-limit, make early requests wait their turn instead of answering 429.")
        boolean waitForTurn;

        @Option(names = "--manual", description = "Ask at the terminal (y/n) before each request that invokes a model; no answer in 5 minutes is a 403.")
        boolean manual;

        @Option(names = "--model-map", paramLabel = "FROM=TO",
            description = "Serve requests for model FROM with Copilot model TO; repeatable (also env COPILOT_API_MODEL_MAP=a=b,c=d).")
        List<String> modelMap;

        @Option(names = "--fallback-model", paramLabel = "MODEL",
            description = "Model for Claude ids the catalog cannot serve, after the family fallback (also env COPILOT_API_FALLBACK_MODEL).")
        String fallbackModel;

        @Option(names = {"-c", "--claude-code"}, description = "Pick models and print the command that launches Claude Code against this server.")
        boolean claudeCode;

        @Option(names = "--claude-code-model", paramLabel = "MODEL", description = "Main model for --claude-code (skips the prompt).")
        String claudeCodeModel;

        @Option(names = "--claude-code-small-model", paramLabel = "MODEL", description = "Small, fast model for --claude-code (skips the prompt).")
        String claudeCodeSmallModel;

        @Option(names = "--premium-budget", paramLabel = "UNITS",
            description = "Refuse (429) a new prompt that would take the premium requests spent since start past UNITS; tool follow-ups still pass.")
        Double premiumBudget;

        @Option(names = "--budget", paramLabel = "CREDITS[/day|/month]",
            description = "Usage-based plans: refuse (429) a model call once the AI Credits spent since start in this UTC day or month"
                + " (default: month) reach CREDITS.")
        String budget;

        @Option(names = "--small-model", paramLabel = "MODEL|off",
            description = "Model for background calls no person typed (Claude Code's Warmup, titles, compactions, side calls);"
                + " default: the lowest token prices on usage-based plans, a free model on legacy ones; off: each call keeps its model.")
        String smallModel;

        @Option(names = "--first-byte-timeout", paramLabel = "SECONDS", defaultValue = "${env:COPILOT_API_FIRST_BYTE_TIMEOUT:-60}",
            description = "Seconds a stream may wait for Copilot's first answer; then 504 or an error event (default: ${DEFAULT-VALUE}; env COPILOT_API_FIRST_BYTE_TIMEOUT).")
        long firstByteTimeout;

        @Option(names = "--stream-idle-timeout", paramLabel = "SECONDS", defaultValue = "${env:COPILOT_API_STREAM_IDLE_TIMEOUT:-120}",
            description = "Seconds a stream may go without an event from Copilot before it is ended with an error event (default: ${DEFAULT-VALUE}; env COPILOT_API_STREAM_IDLE_TIMEOUT).")
        long streamIdleTimeout;

        @Option(names = "--store", paramLabel = "PATH",
            description = "The SQLite file that keeps stored Responses answers and the request history (default: store.db in the data directory).")
        Path storePath;

        @Option(names = "--no-store", description = "Keep nothing: no stored Responses answers (item_reference and previous_response_id get 404), no history.")
        boolean noStore;

        @Option(names = "--store-days", paramLabel = "DAYS", defaultValue = "30",
            description = "Forget stored answers and history rows older than this many days (default: ${DEFAULT-VALUE}).")
        int storeDays;

        @Option(names = "--store-max-mb", paramLabel = "MB", defaultValue = "512",
            description = "Past this size the oldest stored answers and history rows go first (default: ${DEFAULT-VALUE}).")
        long storeMaxMb;

        @Option(names = "--history-bodies", description = "Also keep request and JSON answer bodies in the history, tokens and keys redacted.")
        boolean historyBodies;

        @Option(names = "--shell", paramLabel = "SHELL", description = "Shell syntax for the --claude-code command: posix, fish, powershell or cmd (default: detected).")
        String shell;

        Controls controls(Settings settings, Approver.Terminal terminal) {
            ApiKeys keys = ApiKeys.from(apiKeys, settings.env());
            if (!keys.enabled() && !isLoopback(host)) {
                System.err.println("warning: listening on " + host + " without an API key: anyone who can reach this address can spend"
                    + " your Copilot quota. Add --api-key KEY.");
            }
            Pacer pacer = rateLimit == null ? Pacer.NONE : new Pacer(Duration.ofMillis(Math.round(rateLimit * 1000)), waitForTurn);
            Approver approver = manual ? new Approver(terminal, Duration.ofMinutes(5)) : Approver.NONE;
            return new Controls(keys, pacer, approver, new Stats(budget == null ? null : Cost.Budget.parse(budget)),
                new Billing(premiumBudget, smallModel));
        }

        static boolean isLoopback(String host) {
            return host.equals("localhost") || host.startsWith("127.") || host.equals("::1") || host.equals("[::1]");
        }

        /** A usage error: exit code 2 and the "Try --help" line, like picocli's own parse errors. */
        private CommandLine.ParameterException usage(String message) {
            return new CommandLine.ParameterException(spec.commandLine(), message);
        }

        /** Everything that can be checked without the network, checked before the login and the port. */
        private BrowserGuard validate(Settings settings) {
            if (port < 0 || port > 65535) throw usage("--port must be between 0 and 65535");
            if (rateLimit != null && (rateLimit <= 0 || rateLimit.isNaN())) throw usage("--rate-limit must be a positive number of seconds");
            if (waitForTurn && rateLimit == null) throw usage("--wait goes with --rate-limit");
            if (premiumBudget != null && (premiumBudget < 0 || premiumBudget.isNaN())) throw usage("--premium-budget must be 0 or more premium requests");
            if (budget != null) {
                try {
                    Cost.Budget.parse(budget);
                } catch (IllegalArgumentException e) {
                    throw usage(e.getMessage());
                }
            }
            if (storeDays < 1) throw usage("--store-days must be at least 1");
            if (storeMaxMb < 1) throw usage("--store-max-mb must be at least 1");
            if (noStore && (storePath != null || historyBodies)) throw usage("--no-store keeps nothing: drop --store and --history-bodies");
            if (manual && System.console() == null) throw usage("--manual needs a terminal to ask on, and there is none");
            if (claudeCode && (claudeCodeModel == null || claudeCodeSmallModel == null) && System.console() == null) {
                throw usage("--claude-code has no terminal to ask on: pass --claude-code-model and --claude-code-small-model");
            }
            if (!claudeCode && (claudeCodeModel != null || claudeCodeSmallModel != null || shell != null)) {
                throw usage("--claude-code-model, --claude-code-small-model and --shell go with --claude-code");
            }
            try {
                ClaudeCodeSetup.Shell.detect(shell, settings.env(), System.getProperty("os.name"));
                BrowserGuard guard = BrowserGuard.from(host, allowedHosts, corsOrigins, settings.env());
                if (guard.allowsAnyOrigin() && !ApiKeys.from(apiKeys, settings.env()).enabled()) {
                    throw usage("--cors-origin '*' lets every web page spend your quota; it needs --api-key");
                }
                ModelRouting.from(modelMap, fallbackModel, settings.env());
                return guard;
            } catch (UserFacingException e) {
                throw usage(e.getMessage());
            }
        }

        Store.Options storeOptions() {
            return new Store.Options(!noStore, Optional.ofNullable(storePath), Duration.ofDays(storeDays), storeMaxMb * 1024 * 1024, historyBodies);
        }

        private Timeouts timeouts(Settings settings) {
            try {
                return Timeouts.of(firstByteTimeout, streamIdleTimeout);
            } catch (UserFacingException e) {
                throw usage(e.getMessage());
            }
        }

        @Override
        public Integer call() throws Exception {
            Settings settings = common.settings();
            BrowserGuard guard = validate(settings);
            Timeouts timeouts = timeouts(settings);
            Ports.requireFree(host, port);
            App app = App.open(settings, timeouts, auth -> auth.tokenOrLogin(Console.system()));
            ModelRouting routing = ModelRouting.from(modelMap, fallbackModel, settings.env());
            // one reader of the terminal: the model prompt has its answers before the first --manual question is asked
            boolean asks = manual || claudeCode && (claudeCodeModel == null || claudeCodeSmallModel == null);
            Approver.Terminal terminal = asks && System.console() != null ? Approver.console(System.console()) : null;
            Controls controls = controls(settings, terminal);
            // --claude-code needs the catalog to choose from, and checks its choice before listening
            ClaudeCodeSetup.Choice choice = claudeCode ? ClaudeCodeSetup.choose(app.models(), claudeCodeModel, claudeCodeSmallModel, terminal) : null;
            // fetched on its own thread while Jetty starts: a slow Copilot delays the catalog, not the port, and the
            // first GET /v1/models finds it there (or waits for this fetch) rather than starting one after listening
            if (choice == null) Threads.start(() -> {
                app.models().refreshQuietly();
                controls.billing().checkSmallModel(app.models()).ifPresent(w -> System.err.println("warning: " + w));
            });
            else controls.billing().checkSmallModel(app.models()).ifPresent(w -> System.err.println("warning: " + w));
            Server server = app.serve(new ServerOptions(host, port, routing, controls, guard, storeOptions()));
            GracefulStop.install(server, app.tokens());
            System.out.println("copilot-api " + VERSION + " listening on " + server.baseUrl());
            System.out.println("  OpenAI base URL:    " + server.baseUrl() + "/v1");
            System.out.println("  Anthropic base URL: " + server.baseUrl());
            System.out.println("  Dashboard:          " + server.baseUrl() + "/dashboard");
            if (choice != null) {
                String authToken = apiKeys != null && !apiKeys.isEmpty() ? apiKeys.get(0)
                    : Optional.ofNullable(System.getenv("COPILOT_API_KEYS")).map(k -> k.split(",")[0].trim()).filter(k -> !k.isEmpty()).orElse("copilot-api");
                String command = ClaudeCodeSetup.command(ClaudeCodeSetup.env(server.baseUrl(), authToken, choice),
                    ClaudeCodeSetup.Shell.detect(shell, System.getenv(), System.getProperty("os.name")));
                boolean copied = Clipboard.copy(command);
                System.out.println("\nRun Claude Code against this server" + (copied ? " (copied to the clipboard)" : "") + ":\n\n" + command + "\n");
            }
            server.join();
            return 0;
        }
    }

    /**
     * SIGINT/SIGTERM: refuse new connections, give running requests up to 10 s, end the streams still running
     * with their API's error event, then exit 0.
     */
    static final class GracefulStop {
        static final Duration GRACE = Duration.ofSeconds(10);
        /** Time for the ended streams to write their error event. */
        static final Duration LAST_WORDS = Duration.ofSeconds(2);

        static void install(Server server, CopilotTokens tokens) {
            Runnable stop = () -> {
                stop(server, GRACE);
                server.stop();
                tokens.close();
            };
            java.util.concurrent.atomic.AtomicBoolean stopping = new java.util.concurrent.atomic.AtomicBoolean();
            for (String name : List.of("INT", "TERM")) {
                try {
                    handle(name, () -> {
                        if (stopping.compareAndSet(false, true)) {
                            System.err.println("stopping (press Ctrl-C again to quit at once)");
                            new Thread(stop, "graceful-stop").start();
                        } else {
                            System.err.println("quitting now");
                            Runtime.getRuntime().halt(130);
                        }
                    });
                } catch (ReflectiveOperationException | RuntimeException e) {
                    Logs.log().debug("cannot handle SIG{}: {}", name, describe(e));
                }
            }
        }

        /** Drains the server; returns how many streams were ended at shutdown. */
        static int stop(Server server, Duration grace) {
            Logs.log().info("stopping: no new connections; waiting up to {}s for {} running request(s)", grace.toSeconds(), server.running());
            server.drain(grace);
            int ended = server.endStreams(LAST_WORDS);
            if (ended > 0) Logs.log().info("ended {} stream(s) at shutdown", ended);
            Logs.log().info("stopped, {} request(s) still running", server.running());
            return ended;
        }

        /** sun.misc.Signal, reached reflectively: it is in every JDK, but naming it makes javac warn on each build. */
        private static void handle(String signal, Runnable action) throws ReflectiveOperationException {
            Class<?> signalClass = Class.forName("sun.misc.Signal");
            Class<?> handlerClass = Class.forName("sun.misc.SignalHandler");
            Object handler = java.lang.reflect.Proxy.newProxyInstance(handlerClass.getClassLoader(), new Class<?>[] {handlerClass},
                (proxy, method, args) -> {
                    if (method.getName().equals("handle")) action.run();
                    else if (method.getName().equals("hashCode")) return System.identityHashCode(proxy);
                    else if (method.getName().equals("equals")) return proxy == args[0];
                    else if (method.getName().equals("toString")) return "copilot-api signal handler";
                    return null;
                });
            Object sig = signalClass.getConstructor(String.class).newInstance(signal);
            signalClass.getMethod("handle", signalClass, handlerClass).invoke(null, sig, handler);
        }
    }

    @Command(name = "auth", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
        description = "Log in to GitHub with the device flow and store the token (replaces a stored token).")
    static final class AuthCommand implements Callable<Integer> {
        @Mixin CommonOptions common;

        @Override
        public Integer call() throws Exception {
            Settings settings = common.settings();
            Http http = Http.create(settings);
            GitHubAuth auth = new GitHubAuth(settings, http);
            String token = auth.deviceFlow(Console.system());
            auth.store().save(token);
            System.out.println("Logged in. Token saved to " + settings.tokenFile());
            if (settings.showToken()) System.out.println("GitHub token: " + token);
            try {
                CopilotToken copilot = new CopilotTokens(settings, http, auth.stored(token)).exchange();
                System.out.println("Copilot access confirmed (API: " + copilot.apiUrl().orElse(settings.copilotBaseFallback()) + ").");
            } catch (UpstreamException | UserFacingException e) {
                System.out.println("warning: logged in, but Copilot access could not be confirmed: " + e.getMessage());
            }
            return 0;
        }
    }

    @Command(name = "check-usage", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
        description = "Show the Copilot plan and quota usage.")
    static final class CheckUsageCommand implements Callable<Integer> {
        @Mixin CommonOptions common;

        @Option(names = "--json", description = "Print GitHub's usage report as JSON.")
        boolean json;

        @Override
        public Integer call() throws Exception {
            Settings settings = common.settings();
            GitHubAuth auth = new GitHubAuth(settings, Http.create(settings));
            GitHubToken github = auth.existingToken().orElseThrow(() ->
                new UserFacingException("not logged in: run `copilot-api auth` or pass --github-token"));
            JsonNode usage = auth.usage(github);
            Optional<JsonNode> limits = UsageLimits.saved(settings.dataDir());
            if (usage.isObject()) limits.ifPresent(l -> ((ObjectNode) usage).set(UsageReport.LIMITS, l));
            Path store = Store.Options.DEFAULT.file(settings.dataDir());
            if (usage.isObject()) {
                ((ObjectNode) usage).set(Cost.REPORT, Cost.account(usage, from -> Store.creditsSince(store, from.toEpochMilli()).orElse(null),
                    Instant.now()));
            }
            System.out.println(json ? Json.pretty(usage) : UsageReport.render(usage));
            return 0;
        }
    }

    @Command(name = "debug", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
        description = "Print version, runtime, paths and the URLs in effect.")
    static final class DebugCommand implements Callable<Integer> {
        @Mixin CommonOptions common;

        @Option(names = "--json", description = "Print only JSON on stdout.")
        boolean json;

        @Option(names = "--probe", description = "Also ask GitHub and Copilot: which catalog identity works, whether Copilot refuses "
            + "the editor versions (466), which models appeared or went away since the last start.")
        boolean probe;

        @Override
        public Integer call() {
            Settings settings = common.settings();
            ObjectNode info = DebugInfo.collect(settings, System.getenv());
            if (probe) info.set("probe", DebugInfo.probe(settings));
            if (json) {
                System.out.println(Json.pretty(info));
            } else {
                System.out.println(DebugInfo.render(info));
            }
            return 0;
        }
    }

    /** What `debug` reports; no network calls, so it works when nothing else does. */
    static final class DebugInfo {
        static ObjectNode collect(Settings s, Map<String, String> env) {
            ObjectNode o = Json.object();
            o.put("version", VERSION);
            ObjectNode runtime = o.putObject("runtime");
            runtime.put("java", System.getProperty("java.version"));
            runtime.put("vendor", System.getProperty("java.vendor"));
            runtime.put("os", System.getProperty("os.name") + " " + System.getProperty("os.version"));
            runtime.put("arch", System.getProperty("os.arch"));
            runtime.put("virtualThreads", Threads.virtualThreadsAvailable());
            ObjectNode paths = o.putObject("paths");
            paths.put("dataDir", s.dataDir().toString());
            paths.put("tokenFile", s.tokenFile().toString());
            o.put("tokenExists", Files.isRegularFile(s.tokenFile()));
            o.set("store", Store.probe(Store.Options.DEFAULT.file(s.dataDir())));
            o.put("tokenFromEnvironment", GitHubAuth.envTokenName(env).orElse(null));
            o.put("accountType", s.accountType().wire);
            ObjectNode urls = o.putObject("urls");
            urls.put("github", Http.shown(s.githubUrl()));
            urls.put("githubApi", Http.shown(s.githubApiUrl()));
            urls.put("copilot", Http.shown(s.copilotUrlOverride().orElse(s.copilotBaseFallback())));
            urls.put("copilotSource", s.copilotUrlOverride().isPresent() ? "COPILOT_API_COPILOT_URL"
                : "the Copilot token's endpoints.api at start (shown: the " + s.accountType().wire + " default)");
            ObjectNode editor = o.putObject("editor");
            s.editor().describe(editor);
            o.put("proxyEnv", s.proxyEnv());
            if (s.proxyEnv()) o.put("proxy", EnvProxySelector.from(env).describe());
            return o;
        }

        /** The network part of `debug --probe`: a token exchange and the catalog read, the list kept at start left as it is. */
        static ObjectNode probe(Settings s) {
            ObjectNode o = Json.object();
            Http http = Http.create(s);
            Optional<GitHubToken> github = new GitHubAuth(s, http).existingToken();
            if (github.isEmpty()) return o.put("error", "not logged in: run `copilot-api auth` or set COPILOT_API_GITHUB_TOKEN");
            try (CopilotTokens tokens = new CopilotTokens(s, http, github.get())) {
                tokens.start();
                CopilotClient copilot = new CopilotClient(s, http, tokens, Timeouts.DEFAULT);
                CatalogIdentity.Log log = copilot.catalogLog().observeOnly();
                JsonNode catalog = copilot.catalog();
                o.put("catalogIdentity", log.identity().map(i -> i.label).orElse(null));
                log.tried().forEach(o.putArray("catalogTried")::add);
                o.put("editorVersions", "accepted");
                o.put("models", catalog.path("data").size());
                log.change().ifPresent(c -> {
                    o.put("modelsKeptSince", c.first() ? "nothing kept yet (no start recorded)" : "the last start");
                    c.added().forEach(o.putArray("modelsNew")::add);
                    c.removed().forEach(o.putArray("modelsGone")::add);
                });
            } catch (CopilotClient.VersionsRefused e) {
                o.put("editorVersions", "refused (466)");
                o.put("error", e.getMessage());
            } catch (UserFacingException | UpstreamException | UpstreamUnreachable e) {
                o.put("error", describe(e));
            }
            return o;
        }

        static String render(ObjectNode info) {
            StringBuilder b = new StringBuilder();
            info.properties().forEach(e -> {
                if (e.getValue().isObject()) {
                    b.append(e.getKey()).append(":\n");
                    e.getValue().properties().forEach(f -> b.append("  ").append(f.getKey()).append(": ")
                        .append(f.getValue().isTextual() ? f.getValue().asText() : f.getValue().toString()).append('\n'));
                } else {
                    b.append(e.getKey()).append(": ").append(e.getValue().isTextual() ? e.getValue().asText() : e.getValue()).append('\n');
                }
            });
            return b.toString().stripTrailing();
        }
    }

    /** Turns GitHub's usage JSON into the lines `check-usage` prints. */
    static final class UsageReport {
        /** Where /usage and `check-usage --json` put the limits Copilot's answers reported (see UsageLimits). */
        static final String LIMITS = "copilot_api_limits";

        static String render(JsonNode usage) {
            StringBuilder b = new StringBuilder();
            b.append("Plan: ").append(usage.path("copilot_plan").asText("unknown"))
                .append(usage.path("token_based_billing").asBoolean(false) ? " (usage-based billing)" : "").append('\n');
            b.append("Quota resets: ").append(usage.path("quota_reset_date").asText("unknown")).append('\n');
            JsonNode snapshots = usage.path("quota_snapshots");
            b.append(line("Premium requests", snapshots.path("premium_interactions"))).append('\n');
            b.append(line("Chat", snapshots.path("chat"))).append('\n');
            b.append(line("Completions", snapshots.path("completions")));
            if (usage.path(Cost.REPORT).isObject()) b.append('\n').append(Cost.render(usage.path(Cost.REPORT)));
            JsonNode limits = usage.path(LIMITS);
            limits.path("rate_limits").properties().forEach(e -> b.append('\n').append(limitLine(e.getKey() + " limit", e.getValue())));
            if (limits.path("seen_at").isTextual()) {
                b.append("\n(limits as Copilot reported them to copilot-api at ").append(limits.path("seen_at").asText()).append(')');
            }
            return b.toString();
        }

        /** "Session limit:    12% used, resets 2026-12-03T12:00:00Z". */
        static String limitLine(String label, JsonNode w) {
            String head = String.format(Locale.ROOT, "%-17s ", Character.toUpperCase(label.charAt(0)) + label.substring(1) + ":");
            if (w.path("unlimited").asBoolean(false)) return head + "unlimited";
            String used = w.has("percent_used") ? number(w.path("percent_used").asDouble()) + "% used" : "not reported";
            return head + used + (w.has("resets_at") ? ", resets " + w.path("resets_at").asText() : "");
        }

        static String line(String label, JsonNode q) {
            String head = String.format(Locale.ROOT, "%-17s ", label + ":");
            if (q.isMissingNode() || q.isNull()) return head + "not reported";
            if (q.path("unlimited").asBoolean(false)) return head + "unlimited";
            double total = q.path("entitlement").asDouble(0);
            double remaining = q.path("remaining").asDouble(0);
            double used = Math.max(0, total - remaining);
            double pctRemaining = q.has("percent_remaining") ? q.path("percent_remaining").asDouble()
                : total > 0 ? remaining * 100 / total : 0;
            String s = String.format(Locale.ROOT, "%s%s/%s used (%.1f%% used, %.1f%% remaining)", head,
                number(used), number(total), 100 - pctRemaining, pctRemaining);
            if (q.path("overage_count").asInt(0) > 0) s += ", overage " + q.path("overage_count").asInt();
            return s;
        }

        static String number(double d) {
            return d == Math.rint(d) ? String.valueOf((long) d) : String.format(Locale.ROOT, "%.1f", d);
        }
    }

    /** `start --claude-code`: pick the two models, then the command that launches Claude Code against us. */
    static final class ClaudeCodeSetup {
        record Choice(String main, String small) {}

        enum Shell {
            POSIX, FISH, POWERSHELL, CMD;

            static Shell detect(String option, Map<String, String> env, String osName) {
                if (option != null) {
                    return switch (option.toLowerCase(Locale.ROOT)) {
                        case "posix", "bash", "zsh", "sh" -> POSIX;
                        case "fish" -> FISH;
                        case "powershell", "pwsh" -> POWERSHELL;
                        case "cmd" -> CMD;
                        default -> throw new UserFacingException("--shell takes posix, fish, powershell or cmd, not '" + option + "'");
                    };
                }
                String shell = env.getOrDefault("SHELL", "");
                if (shell.endsWith("/fish")) return FISH;
                if (!shell.isEmpty() || !osName.toLowerCase(Locale.ROOT).startsWith("windows")) return POSIX;
                return env.containsKey("PSModulePath") ? POWERSHELL : CMD;
            }
        }

        static Choice choose(ModelCatalog models, String main, String small, Approver.Terminal terminal) {
            List<String> ids = new ArrayList<>();
            for (JsonNode m : models.list()) if (ModelResolver.isChat(m)) ids.add(m.path("id").asText());
            if (ids.isEmpty()) throw new UserFacingException("the Copilot model list is empty; cannot set up Claude Code");
            if ((main == null || small == null) && terminal == null) {
                throw new UserFacingException("no terminal to ask on: pass --claude-code-model and --claude-code-small-model");
            }
            List<String> labels = labels(models.list(), ids);
            String chosenMain = main != null ? check(ids, main) : ask(terminal, ids, labels, "main model", preferred(models.list(), ids, "sonnet"));
            String chosenSmall = small != null ? check(ids, small)
                : ask(terminal, ids, labels, "small, fast model (background tasks; a free one costs nothing)", smallDefault(models.list(), ids));
            return new Choice(chosenMain, chosenSmall);
        }

        /** Each model with what a prompt to it costs: "gpt-4.1 (free)", "claude-opus-4.1 (3 premium requests)". */
        static List<String> labels(List<JsonNode> catalog, List<String> ids) {
            Map<String, Double> multipliers = new HashMap<>();
            for (JsonNode m : catalog) multipliers.put(m.path("id").asText(), Billing.multiplier(m));
            List<String> out = new ArrayList<>();
            for (String id : ids) {
                double x = multipliers.getOrDefault(id, 1.0);
                out.add(id + (x == 0 ? " (free)" : " (" + Billing.format(x) + (x == 1 ? " premium request)" : " premium requests)")));
            }
            return out;
        }

        /** The small slot's default: the cheap model that also answers background calls, else the haiku family. */
        static int smallDefault(List<JsonNode> catalog, List<String> ids) {
            return Billing.unlimited().cheapModel(catalog, Billing.Need.ANY).map(m -> ids.indexOf(m.path("id").asText())).filter(i -> i >= 0)
                .orElseGet(() -> preferred(catalog, ids, "haiku"));
        }

        static String check(List<String> ids, String id) {
            if (!ids.contains(id)) throw new UserFacingException("unknown model '" + id + "'; available: " + String.join(", ", ids));
            return id;
        }

        /** The default answer: the newest model of the family, as the family name alone resolves, else the first. */
        static int preferred(List<JsonNode> catalog, List<String> ids, String family) {
            return ModelResolver.familyMember(catalog, family)
                .map(m -> Math.max(0, ids.indexOf(m.path("id").asText()))).orElse(0);
        }

        private static String ask(Approver.Terminal terminal, List<String> ids, List<String> labels, String what, int defaultIndex) {
            StringBuilder menu = new StringBuilder(String.format(Locale.ROOT, "%nChoose the %s for Claude Code:%n", what));
            for (int i = 0; i < ids.size(); i++) menu.append(String.format(Locale.ROOT, "  %2d) %s%n", i + 1, labels.get(i)));
            String prompt = String.format(Locale.ROOT, "Number [%d]: ", defaultIndex + 1);
            terminal.ask(menu + prompt);
            while (true) {
                String answer = answer(terminal);
                if (answer == null || answer.isBlank()) return ids.get(defaultIndex);
                try {
                    int n = Integer.parseInt(answer.trim());
                    if (n >= 1 && n <= ids.size()) return ids.get(n - 1);
                } catch (NumberFormatException e) {
                    Logs.log().debug("not a number: {}", answer);
                }
                terminal.ask(String.format(Locale.ROOT, "Please enter a number from 1 to %d.%n%s", ids.size(), prompt));
            }
        }

        /** The operator's line; no hurry (a day), and the default when none comes. */
        private static String answer(Approver.Terminal terminal) {
            try {
                return terminal.answer(Duration.ofDays(1));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new UserFacingException("interrupted while waiting for a model choice");
            }
        }

        /** Every variable env(...) sets: what `setup claude-code --remove` takes out of settings.json. */
        static final List<String> VARIABLES = List.of("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_MODEL",
            "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_SMALL_FAST_MODEL",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC");

        static Map<String, String> env(String baseUrl, String authToken, Choice c) {
            Map<String, String> env = new LinkedHashMap<>();
            env.put("ANTHROPIC_BASE_URL", baseUrl);
            env.put("ANTHROPIC_AUTH_TOKEN", authToken);
            env.put("ANTHROPIC_MODEL", c.main());
            env.put("ANTHROPIC_DEFAULT_SONNET_MODEL", c.main());
            env.put("ANTHROPIC_DEFAULT_OPUS_MODEL", c.main());
            env.put("ANTHROPIC_DEFAULT_HAIKU_MODEL", c.small());
            env.put("ANTHROPIC_SMALL_FAST_MODEL", c.small());
            env.put("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
            return env;
        }

        static String command(Map<String, String> env, Shell shell) {
            StringBuilder b = new StringBuilder();
            switch (shell) {
                case POSIX -> env.forEach((k, v) -> b.append(k).append('=').append(posixQuote(v)).append(' '));
                case FISH -> {
                    b.append("env ");
                    env.forEach((k, v) -> b.append(k).append('=').append(posixQuote(v)).append(' '));
                }
                case POWERSHELL -> env.forEach((k, v) -> b.append("$env:").append(k).append(" = '").append(v.replace("'", "''")).append("'; "));
                case CMD -> env.forEach((k, v) -> b.append("set \"").append(k).append('=').append(v).append("\" && "));
            }
            return b.append("claude").toString();
        }

        static String posixQuote(String v) {
            return v.matches("[A-Za-z0-9_./:@=+-]+") ? v : "'" + v.replace("'", "'\\''") + "'";
        }
    }

    @Command(name = "setup", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
        description = {"Point a client at this server: print its environment and launch command, or write them into its own configuration.",
            "CLIENT is claude-code, codex, opencode, openai (the OpenAI SDKs and OpenAI-compatible tools) or gemini-cli. Models come from the live catalog."})
    static final class SetupCommand implements Callable<Integer> {
        @Mixin CommonOptions common;

        @CommandLine.Spec CommandLine.Model.CommandSpec spec;

        @CommandLine.Parameters(paramLabel = "CLIENT", description = "claude-code, codex, opencode, openai or gemini-cli.")
        String clientName;

        @Option(names = {"-p", "--port"}, paramLabel = "PORT", defaultValue = "" + DEFAULT_PORT, description = "The server's port (default: ${DEFAULT-VALUE}).")
        int port;

        @Option(names = "--host", paramLabel = "ADDRESS", defaultValue = "127.0.0.1", description = "The server's address as the client reaches it (default: ${DEFAULT-VALUE}).")
        String host;

        @Option(names = "--url", paramLabel = "URL",
            description = "The server's base URL as the client reaches it, instead of --host and --port (e.g. a container's published address).")
        String url;

        @Option(names = "--api-key", paramLabel = "KEY",
            description = "The key the server requires (default: the first of env COPILOT_API_KEYS; none: any value works).")
        String apiKey;

        @Option(names = "--model", paramLabel = "MODEL", description = "The client's model (default: chosen from the catalog).")
        String model;

        @Option(names = "--small-model", paramLabel = "MODEL", description = "Claude Code's small, fast model (default: a free one from the catalog).")
        String smallModel;

        @Option(names = "--shell", paramLabel = "SHELL", description = "Shell syntax: posix, fish, powershell or cmd (default: detected).")
        String shell;

        @Option(names = "--json", description = "Print the same as JSON, for machines.")
        boolean json;

        @Option(names = "--write", description = "Write it into the client's configuration (a backup first; only copilot-api's keys change).")
        boolean write;

        @Option(names = "--remove", description = "Take copilot-api's keys out of the client's configuration again (a backup first).")
        boolean remove;

        @Option(names = "--project", description = "The current directory's .claude/settings.json (claude-code) or opencode.json (opencode), not the user's.")
        boolean project;

        private CommandLine.ParameterException usage(String message) {
            return new CommandLine.ParameterException(spec.commandLine(), message);
        }

        @Override
        public Integer call() throws Exception {
            Settings settings = common.settings();
            ClientSetup.Client client = ClientSetup.Client.named(clientName).orElseThrow(() ->
                usage("setup knows claude-code, codex, opencode, openai and gemini-cli, not '" + clientName + "'"));
            if (write && remove) throw usage("--write and --remove go separately");
            if (project && !client.hasProjectFile()) throw usage("--project goes with claude-code and opencode");
            if (smallModel != null && client != ClientSetup.Client.CLAUDE_CODE) throw usage("--small-model goes with claude-code");
            if ((write || remove) && client.file(settings.env(), project).isEmpty()) {
                throw usage(client.label + " has no configuration file to write: use the environment `setup " + client.label + "` prints");
            }
            ClaudeCodeSetup.Shell shellSyntax;
            String base;
            try {
                shellSyntax = ClaudeCodeSetup.Shell.detect(shell, settings.env(), System.getProperty("os.name"));
                base = url != null ? ClientSetup.baseUrl(url) : ClientSetup.baseUrl("http://" + (host.contains(":") ? "[" + host + "]" : host) + ":" + port);
            } catch (UserFacingException e) {
                throw usage(e.getMessage());
            }
            Optional<String> key = Optional.ofNullable(apiKey).filter(k -> !k.isBlank())
                .or(() -> Settings.listOption(settings.env().get("COPILOT_API_KEYS"), null).stream().findFirst());
            if (remove) return ClientSetup.apply(client.removals(settings.env(), project), System.out);
            List<JsonNode> catalog = model != null && (smallModel != null || client != ClientSetup.Client.CLAUDE_CODE)
                ? ClientSetup.catalogIfLoggedIn(settings) : ClientSetup.catalog(settings);
            ClientSetup.Plan plan = client.plan(base, key, ClientSetup.choose(client, catalog, model, smallModel), catalog, settings.env(), project);
            if (write) return ClientSetup.apply(plan.edits(), System.out);
            System.out.println(json ? Json.pretty(plan.json()) : plan.render(shellSyntax));
            return 0;
        }
    }

    /** `setup CLIENT`: what points each client at the server, and the careful edit of its configuration file. */
    static final class ClientSetup {
        /** Codex reads a profile from NAME.config.toml beside config.toml; this is copilot-api's. */
        static final String CODEX_PROFILE = "copilot-api";
        /** The provider name copilot-api owns in opencode.json. */
        static final String OPENCODE_PROVIDER = "copilot-api";
        /** What a client sends as its key when the server requires none. */
        static final String NO_KEY = "copilot-api";

        enum Client {
            CLAUDE_CODE("claude-code"), CODEX("codex"), OPENCODE("opencode"), OPENAI("openai"), GEMINI_CLI("gemini-cli");

            final String label;

            Client(String label) {
                this.label = label;
            }

            static Optional<Client> named(String name) {
                for (Client c : values()) if (c.label.equalsIgnoreCase(name.trim())) return Optional.of(c);
                return Optional.empty();
            }

            boolean hasProjectFile() {
                return this == CLAUDE_CODE || this == OPENCODE;
            }

            /**
             * The file --write edits: Claude Code's settings.json, Codex's profile file, opencode.json, Gemini CLI's
             * settings.json (its .env beside it: {@link GeminiCli#envFile}); the OpenAI SDKs have none.
             */
            Optional<Path> file(Map<String, String> env, boolean project) {
                return switch (this) {
                    case CLAUDE_CODE -> Optional.of(project ? Path.of("").toAbsolutePath().resolve(".claude").resolve("settings.json")
                        : Optional.ofNullable(env.get("CLAUDE_CONFIG_DIR")).filter(d -> !d.isBlank()).map(Path::of)
                            .orElseGet(() -> home(env).resolve(".claude")).resolve("settings.json"));
                    case CODEX -> Optional.of(Optional.ofNullable(env.get("CODEX_HOME")).filter(d -> !d.isBlank()).map(Path::of)
                        .orElseGet(() -> home(env).resolve(".codex")).resolve(CODEX_PROFILE + ".config.toml"));
                    case OPENCODE -> Optional.of(project ? Path.of("").toAbsolutePath().resolve("opencode.json")
                        : Optional.ofNullable(env.get("XDG_CONFIG_HOME")).filter(d -> !d.isBlank() && Path.of(d).isAbsolute()).map(Path::of)
                            .orElseGet(() -> home(env).resolve(".config")).resolve("opencode").resolve("opencode.json"));
                    case OPENAI -> Optional.empty();
                    case GEMINI_CLI -> Optional.of(GeminiCli.dir(env).resolve("settings.json"));
                };
            }

            Plan plan(String base, Optional<String> key, ClaudeCodeSetup.Choice choice, List<JsonNode> catalog, Map<String, String> env,
                    boolean project) {
                Optional<Path> file = file(env, project);
                return switch (this) {
                    case CLAUDE_CODE -> {
                        Map<String, String> vars = ClaudeCodeSetup.env(base, key.orElse(NO_KEY), choice);
                        yield new Plan(this, base, choice, vars, "claude", file, Json.pretty(Json.object().set("env", JSON.valueToTree(vars))), key.isPresent());
                    }
                    case CODEX -> new Plan(this, base, choice, Map.of(), "codex -p " + CODEX_PROFILE, file, codexProfile(base, key, choice.main()), key.isPresent());
                    case OPENCODE -> new Plan(this, base, choice, Map.of(), "opencode", file, Json.pretty(opencodeConfig(base, key, choice.main())), key.isPresent());
                    case OPENAI -> {
                        Map<String, String> vars = new LinkedHashMap<>();
                        vars.put("OPENAI_BASE_URL", base + "/v1");
                        vars.put("OPENAI_API_KEY", key.orElse(NO_KEY));
                        vars.put("OPENAI_MODEL", choice.main());
                        yield new Plan(this, base, choice, vars, null, file, null, key.isPresent());
                    }
                    case GEMINI_CLI -> new Plan(this, base, choice, GeminiCli.env(base, key.orElse(NO_KEY)), "gemini", file,
                        Json.pretty(GeminiCli.settings(choice.main(), GeminiCli.compressionThreshold(catalog, choice.main()))), key.isPresent());
                };
            }

            List<Edit> removals(Map<String, String> env, boolean project) throws IOException {
                Path path = file(env, project).orElseThrow();
                return switch (this) {
                    case CLAUDE_CODE -> List.of(Edit.settingsJson(path, Map.of(), true));
                    case OPENCODE -> List.of(Edit.opencodeJson(path, null));
                    case GEMINI_CLI -> List.of(Edit.ownedKeys(path, null), Edit.dotEnv(GeminiCli.envFile(path), Map.of()));
                    default -> List.of(Edit.ownFile(path, null));
                };
            }
        }

        /**
         * Gemini CLI with API-key auth against copilot-api. Headless, the CLI refuses the "gateway" auth that
         * GOOGLE_GEMINI_BASE_URL alone selects (exit 41), so settings.json names gemini-api-key. The CLI reads one .env,
         * the first found walking up from its working directory, ending with ~/.gemini/.env (only in trusted folders);
         * the variables go there. It assumes a 1M-token window for any model it does not know and compresses at
         * compressionThreshold times that, so the threshold is lowered to the Copilot model's prompt window.
         */
        static final class GeminiCli {
            /** The paths in settings.json that copilot-api owns; the user's other settings are never touched. */
            static final List<List<String>> SETTINGS = List.of(List.of("security", "auth", "selectedType"), List.of("model", "name"),
                List.of("model", "compressionThreshold"));
            /** The variables copilot-api owns in ~/.gemini/.env. */
            static final List<String> VARIABLES = List.of("GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL");
            /** The window Gemini CLI 0.61 assumes for every model name it does not know (tokenLimit's default). */
            static final int ASSUMED_WINDOW = 1_048_576;
            /** Compress at this share of the real prompt window, leaving room for the answer and the next tool result. */
            static final double WINDOW_SHARE = 0.8;
            /** The prompt window assumed when there is no catalog to read it from. */
            static final int DEFAULT_PROMPT_TOKENS = 128_000;

            /** ~/.gemini, or $GEMINI_CLI_HOME/.gemini, as the CLI finds it. */
            static Path dir(Map<String, String> env) {
                return Optional.ofNullable(env.get("GEMINI_CLI_HOME")).filter(d -> !d.isBlank()).map(Path::of).orElseGet(() -> home(env))
                    .resolve(".gemini");
            }

            /** The .env beside settings.json: the last one the CLI looks for, after the working directory and its parents. */
            static Path envFile(Path settings) {
                return settings.resolveSibling(".env");
            }

            /** The base URL without a version: the SDK adds /v1beta itself. */
            static Map<String, String> env(String base, String key) {
                Map<String, String> vars = new LinkedHashMap<>();
                vars.put("GOOGLE_GEMINI_BASE_URL", base);
                vars.put("GEMINI_API_KEY", key);
                return vars;
            }

            static ObjectNode settings(String model, double compressionThreshold) {
                ObjectNode o = Json.object();
                o.putObject("security").putObject("auth").put("selectedType", "gemini-api-key");
                o.putObject("model").put("name", model).put("compressionThreshold", compressionThreshold);
                return o;
            }

            /** The model's prompt window (80% of it) as the fraction of the assumed 1M window, rounded down to 0.001. */
            static double compressionThreshold(List<JsonNode> catalog, String model) {
                int prompt = catalog.stream().filter(m -> m.path("id").asText().equals(model)).findFirst()
                    .map(m -> m.path("capabilities").path("limits").path("max_prompt_tokens").asInt(0)).filter(n -> n > 0)
                    .orElse(DEFAULT_PROMPT_TOKENS);
                double share = Math.floor(WINDOW_SHARE * prompt / ASSUMED_WINDOW * 1000) / 1000;
                return Math.max(0.001, Math.min(0.5, share));
            }
        }

        /** What `setup` prints, or writes. */
        record Plan(Client client, String baseUrl, ClaudeCodeSetup.Choice choice, Map<String, String> env, String launch,
            Optional<Path> file, String fileText, boolean hasKey) {

            /** The edits --write makes: the client's file, and for Gemini CLI also its .env. */
            List<Edit> edits() throws IOException {
                Path path = file.orElseThrow();
                return switch (client) {
                    case CLAUDE_CODE -> List.of(Edit.settingsJson(path, env, false));
                    case OPENCODE -> List.of(Edit.opencodeJson(path, (ObjectNode) JSON.readTree(fileText)));
                    case GEMINI_CLI -> List.of(Edit.ownedKeys(path, (ObjectNode) JSON.readTree(fileText)),
                        Edit.dotEnv(GeminiCli.envFile(path), env));
                    default -> List.of(Edit.ownFile(path, fileText));
                };
            }

            String render(ClaudeCodeSetup.Shell shell) {
                StringBuilder b = new StringBuilder();
                b.append("# ").append(client.label).append(" through copilot-api at ").append(baseUrl).append('\n');
                if (!env.isEmpty()) {
                    b.append("\n# the environment (").append(shell.name().toLowerCase(Locale.ROOT)).append("):\n");
                    env.forEach((k, v) -> b.append(export(shell, k, v)).append('\n'));
                }
                if (fileText != null) {
                    boolean both = client == Client.GEMINI_CLI;
                    b.append(env.isEmpty() ? "\n# in " : both ? "\n# and, in " : "\n# or, in ").append(file.map(Path::toString).orElse("the configuration"))
                        .append(" (`setup ").append(client.label).append(" --write` merges it there")
                        .append(both ? ", and the environment into " + GeminiCli.envFile(file.orElseThrow()) + ", which Gemini CLI reads in trusted folders" : "")
                        .append("):\n").append(fileText.stripTrailing()).append('\n');
                }
                if (launch != null) {
                    b.append("\n# then run:\n").append(client == Client.CLAUDE_CODE ? ClaudeCodeSetup.command(env, shell) : launch).append('\n');
                }
                return b.toString().stripTrailing();
            }

            ObjectNode json() {
                ObjectNode o = Json.object();
                o.put("client", client.label);
                o.put("baseUrl", baseUrl);
                o.put("model", choice.main());
                if (client == Client.CLAUDE_CODE) o.put("smallModel", choice.small());
                ObjectNode vars = o.putObject("env");
                env.forEach(vars::put);
                o.put("launch", client == Client.CLAUDE_CODE ? "claude" : launch);
                file.ifPresent(f -> o.putObject("file").put("path", f.toString()).put("content", fileText));
                if (client == Client.GEMINI_CLI) o.put("envFile", GeminiCli.envFile(file.orElseThrow()).toString());
                return o;
            }
        }

        static String export(ClaudeCodeSetup.Shell shell, String k, String v) {
            return switch (shell) {
                case POSIX -> "export " + k + "=" + ClaudeCodeSetup.posixQuote(v);
                case FISH -> "set -gx " + k + " " + ClaudeCodeSetup.posixQuote(v);
                case POWERSHELL -> "$env:" + k + " = '" + v.replace("'", "''") + "'";
                case CMD -> "set \"" + k + "=" + v + "\"";
            };
        }

        /** Codex's profile: our provider on the Responses wire, over HTTP until copilot-api serves WebSocket. */
        static String codexProfile(String base, Optional<String> key, String model) {
            StringBuilder b = new StringBuilder();
            b.append("# written by `copilot-api setup codex --write`; `copilot-api setup codex --remove` deletes it. Run: codex -p ")
                .append(CODEX_PROFILE).append('\n');
            b.append("model_provider = \"copilot-api\"\n");
            b.append("model = ").append(tomlString(model)).append("\n\n");
            b.append("[model_providers.copilot-api]\n");
            b.append("name = \"copilot-api\"\n");
            b.append("base_url = ").append(tomlString(base + "/v1")).append('\n');
            b.append("wire_api = \"responses\"\n");
            b.append("supports_websockets = false\n");
            key.ifPresent(k -> b.append("experimental_bearer_token = ").append(tomlString(k)).append('\n'));
            return b.toString();
        }

        /** opencode's provider entry (chat completions through the AI SDK's OpenAI-compatible provider) and its model. */
        static ObjectNode opencodeConfig(String base, Optional<String> key, String model) {
            ObjectNode o = Json.object();
            o.put("$schema", "https://opencode.ai/config.json");
            ObjectNode entry = o.putObject("provider").putObject(OPENCODE_PROVIDER);
            entry.put("npm", "@ai-sdk/openai-compatible");
            entry.put("name", "copilot-api");
            entry.putObject("options").put("baseURL", base + "/v1").put("apiKey", key.orElse(NO_KEY));
            entry.putObject("models").putObject(model);
            o.put("model", OPENCODE_PROVIDER + "/" + model);
            return o;
        }

        static String tomlString(String s) {
            return JSON.valueToTree(s).toString();
        }

        /** http(s)://host[:port], no path, no trailing slash: what every client's base URL is built on. */
        static String baseUrl(String url) {
            String u = Settings.trimSlash(url.trim());
            URI parsed;
            try {
                parsed = URI.create(u);
            } catch (IllegalArgumentException e) {
                throw new UserFacingException("--url takes an address such as http://127.0.0.1:4141, not '" + url + "'");
            }
            if (!"http".equals(parsed.getScheme()) && !"https".equals(parsed.getScheme()) || parsed.getHost() == null
                    || !Optional.ofNullable(parsed.getRawPath()).orElse("").isEmpty() || parsed.getRawQuery() != null) {
                throw new UserFacingException("--url takes an address such as http://127.0.0.1:4141 (no path), not '" + url + "'");
            }
            return u;
        }

        static Path home(Map<String, String> env) {
            return Path.of(Optional.ofNullable(env.get("HOME")).filter(h -> !h.isBlank()).orElse(System.getProperty("user.home")));
        }

        /** The live catalog from Copilot, read as `debug --probe` reads it (the list kept at start untouched). */
        static List<JsonNode> catalog(Settings s) {
            Http http = Http.create(s);
            GitHubToken github = new GitHubAuth(s, http).existingToken().orElseThrow(() ->
                new UserFacingException("not logged in, so no catalog to choose models from: run `copilot-api auth`, or pass --model"
                    + " (and --small-model for claude-code)"));
            try (CopilotTokens tokens = new CopilotTokens(s, http, github)) {
                tokens.start();
                CopilotClient copilot = new CopilotClient(s, http, tokens, Timeouts.DEFAULT);
                copilot.catalogLog().observeOnly();
                List<JsonNode> out = new ArrayList<>();
                copilot.catalog().path("data").forEach(out::add);
                return out;
            }
        }

        /** With the models given, the catalog only checks them: none when there is no login. */
        static List<JsonNode> catalogIfLoggedIn(Settings s) {
            return new GitHubAuth(s, Http.create(s)).existingToken().isPresent() ? catalog(s) : List.of();
        }

        /** The given models (checked against the catalog when there is one), else the catalog's picks for this client. */
        static ClaudeCodeSetup.Choice choose(Client client, List<JsonNode> catalog, String model, String small) {
            List<String> ids = new ArrayList<>();
            for (JsonNode m : catalog) if (ModelResolver.isChat(m)) ids.add(m.path("id").asText());
            if (catalog.isEmpty()) return new ClaudeCodeSetup.Choice(model, small);
            if (ids.isEmpty()) throw new UserFacingException("the Copilot model list has no chat models; cannot set up " + client.label);
            String main = model != null ? ClaudeCodeSetup.check(ids, model) : ids.get(switch (client) {
                case CLAUDE_CODE -> ClaudeCodeSetup.preferred(catalog, ids, "sonnet");
                case CODEX -> codexDefault(catalog, ids);
                case OPENAI, OPENCODE -> ClaudeCodeSetup.smallDefault(catalog, ids);
                case GEMINI_CLI -> Gemini.GeminiModels.newest(catalog, null).map(m -> Math.max(0, ids.indexOf(m.path("id").asText()))).orElse(0);
            });
            String fast = client != Client.CLAUDE_CODE ? null
                : small != null ? ClaudeCodeSetup.check(ids, small) : ids.get(ClaudeCodeSetup.smallDefault(catalog, ids));
            return new ClaudeCodeSetup.Choice(main, fast);
        }

        /** Codex speaks only Responses: the newest codex model, else the first that Copilot serves on /responses. */
        static int codexDefault(List<JsonNode> catalog, List<String> ids) {
            Optional<JsonNode> codex = ModelResolver.familyMember(catalog, "codex");
            if (codex.isPresent()) return Math.max(0, ids.indexOf(codex.get().path("id").asText()));
            for (JsonNode m : catalog) {
                if (ModelResolver.isChat(m) && ModelResolver.endpoints(m).contains("/responses")) return ids.indexOf(m.path("id").asText());
            }
            return 0;
        }

        static int apply(List<Edit> edits, java.io.PrintStream out) throws IOException {
            for (Edit edit : edits) apply(edit, out);
            return 0;
        }

        /** Writes (or removes) an edit: nothing when nothing changes, else a backup, the new file readable by its owner only, and the diff. */
        static int apply(Edit edit, java.io.PrintStream out) throws IOException {
            if (java.util.Objects.equals(edit.before(), edit.after())) {
                out.println(edit.path() + ": already up to date, nothing changed");
                return 0;
            }
            if (edit.before() != null) {
                Path backup = edit.path().resolveSibling(edit.path().getFileName() + "." + java.time.format.DateTimeFormatter
                    .ofPattern("yyyyMMdd-HHmmss-SSS").withZone(ZoneOffset.UTC).format(Instant.now()) + ".bak");
                Files.copy(edit.path(), backup, StandardCopyOption.COPY_ATTRIBUTES);
                Posix.restrict(backup, "rw-------");
                out.println("backup: " + backup);
            }
            if (edit.after() == null) {
                Files.delete(edit.path());
                out.println("removed " + edit.path());
            } else {
                Files.createDirectories(edit.path().getParent());
                Path tmp = Files.createTempFile(edit.path().getParent(), ".copilot-api", ".tmp");
                Posix.restrict(tmp, "rw-------");
                Files.writeString(tmp, edit.after());
                Files.move(tmp, edit.path(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                out.println((edit.before() == null ? "created " : "updated ") + edit.path() + " (readable by you only)");
            }
            edit.diff().forEach(out::println);
            return 0;
        }

        /** One file's text before and after (null: absent), and the lines that changed, secrets shown as ***. */
        record Edit(Path path, String before, String after, List<String> diff) {
            /** Claude Code's settings.json: our env keys set (or, removing, taken out); every other key kept as it was. */
            static Edit settingsJson(Path path, Map<String, String> env, boolean removing) throws IOException {
                String before = Files.exists(path) ? Files.readString(path) : null;
                ObjectNode root = parseObject(path, before);
                if (!root.path("env").isMissingNode() && !root.path("env").isObject()) {
                    throw new UserFacingException(path + ": \"env\" is not an object; fix it by hand, nothing was changed");
                }
                ObjectNode vars = root.has("env") ? (ObjectNode) root.get("env") : Json.object();
                List<String> diff = new ArrayList<>();
                for (String k : ClaudeCodeSetup.VARIABLES) {
                    String old = vars.has(k) ? vars.get(k).asText() : null;
                    String now = removing ? null : env.get(k);
                    if (java.util.Objects.equals(old, now)) continue;
                    if (now == null) vars.remove(k);
                    else vars.put(k, now);
                    if (old != null) diff.add("- env." + k + " = " + shown(k, old));
                    if (now != null) diff.add("+ env." + k + " = " + shown(k, now));
                }
                if (vars.isEmpty()) root.remove("env");
                else root.set("env", vars);
                if (diff.isEmpty()) return new Edit(path, before, before, diff);
                return new Edit(path, before, root.isEmpty() && removing ? null : Json.pretty(root) + "\n", diff);
            }

            /**
             * opencode.json: our provider entry set (or removed with null), the default model ours while it names our
             * provider; the user's other providers and settings kept as they were.
             */
            static Edit opencodeJson(Path path, ObjectNode ours) throws IOException {
                String before = Files.exists(path) ? Files.readString(path) : null;
                ObjectNode root = parseObject(path, before);
                if (ours != null && root.isEmpty()) root.put("$schema", ours.path("$schema").asText());
                if (!root.path("provider").isMissingNode() && !root.path("provider").isObject()) {
                    throw new UserFacingException(path + ": \"provider\" is not an object; fix it by hand, nothing was changed");
                }
                ObjectNode providers = root.has("provider") ? (ObjectNode) root.get("provider") : Json.object();
                JsonNode oldEntry = providers.get(OPENCODE_PROVIDER);
                JsonNode newEntry = ours == null ? null : ours.path("provider").path(OPENCODE_PROVIDER);
                String oldModel = root.path("model").asText(null);
                String newModel = ours != null ? ours.path("model").asText()
                    : oldModel != null && oldModel.startsWith(OPENCODE_PROVIDER + "/") ? null : oldModel;
                List<String> diff = new ArrayList<>();
                if (!java.util.Objects.equals(oldEntry, newEntry)) {
                    if (oldEntry != null) diff.add("- provider." + OPENCODE_PROVIDER + " = " + shownEntry(oldEntry));
                    if (newEntry != null) diff.add("+ provider." + OPENCODE_PROVIDER + " = " + shownEntry(newEntry));
                    if (newEntry == null) providers.remove(OPENCODE_PROVIDER);
                    else providers.set(OPENCODE_PROVIDER, newEntry);
                }
                if (!java.util.Objects.equals(oldModel, newModel)) {
                    if (oldModel != null) diff.add("- model = " + oldModel);
                    if (newModel != null) diff.add("+ model = " + newModel);
                    if (newModel == null) root.remove("model");
                    else root.put("model", newModel);
                }
                if (diff.isEmpty()) return new Edit(path, before, before, diff);
                if (providers.isEmpty()) root.remove("provider");
                else root.set("provider", providers);
                boolean onlySchema = root.size() == 1 && root.has("$schema");
                return new Edit(path, before, ours == null && (root.isEmpty() || onlySchema) ? null : Json.pretty(root) + "\n", diff);
            }

            /**
             * Gemini CLI's settings.json: the values at our paths ({@link GeminiCli#SETTINGS}) set from ours (or, with
             * null, removed, with objects that become empty); every other setting kept as it was.
             */
            static Edit ownedKeys(Path path, ObjectNode ours) throws IOException {
                String before = Files.exists(path) ? Files.readString(path) : null;
                ObjectNode root = parseObject(path, before);
                List<String> diff = new ArrayList<>();
                for (List<String> at : GeminiCli.SETTINGS) {
                    String shown = String.join(".", at);
                    ObjectNode parent = root;
                    for (String name : at.subList(0, at.size() - 1)) {
                        JsonNode child = parent.path(name);
                        if (!child.isMissingNode() && !child.isObject()) {
                            throw new UserFacingException(path + ": \"" + name + "\" is not an object; fix it by hand, nothing was changed");
                        }
                        parent = child.isObject() ? (ObjectNode) child : parent.putObject(name);
                    }
                    String leaf = at.get(at.size() - 1);
                    JsonNode old = parent.get(leaf);
                    JsonNode now = ours == null ? null : ours.at("/" + String.join("/", at));
                    if (now != null && now.isMissingNode()) now = null;
                    if (java.util.Objects.equals(old, now)) continue;
                    if (now == null) parent.remove(leaf);
                    else parent.set(leaf, now);
                    if (old != null) diff.add("- " + shown + " = " + shown(leaf, old.asText()));
                    if (now != null) diff.add("+ " + shown + " = " + shown(leaf, now.asText()));
                }
                pruneEmpty(root);
                if (diff.isEmpty()) return new Edit(path, before, before, diff);
                return new Edit(path, before, root.isEmpty() && ours == null ? null : Json.pretty(root) + "\n", diff);
            }

            /** Removes the objects left empty below root (a removal's parents), deepest first. */
            private static void pruneEmpty(ObjectNode node) {
                List<String> empty = new ArrayList<>();
                node.properties().forEach(e -> {
                    if (e.getValue() instanceof ObjectNode child) {
                        pruneEmpty(child);
                        if (child.isEmpty()) empty.add(e.getKey());
                    }
                });
                node.remove(empty);
            }

            /**
             * A dotenv file: each of our variables ({@link GeminiCli#VARIABLES}) set on its first line (or appended),
             * its other lines dropped, or all of them removed when absent from vars; other lines kept as they were.
             */
            static Edit dotEnv(Path path, Map<String, String> vars) throws IOException {
                String before = Files.exists(path) ? Files.readString(path) : null;
                List<String> lines = new ArrayList<>();
                List<String> diff = new ArrayList<>();
                Set<String> seen = new LinkedHashSet<>();
                for (String line : before == null ? List.<String>of() : before.lines().toList()) {
                    java.util.regex.Matcher m = DOTENV_LINE.matcher(line);
                    String name = m.matches() ? m.group(1) : null;
                    if (name == null || !GeminiCli.VARIABLES.contains(name)) {
                        lines.add(line);
                        continue;
                    }
                    String old = unquote(m.group(2).strip());
                    String now = seen.add(name) ? vars.get(name) : null;
                    if (now != null && now.equals(old)) {
                        lines.add(line);
                        continue;
                    }
                    diff.add("- " + name + " = " + shown(name, old));
                    if (now != null) {
                        lines.add(name + "=" + dotEnvValue(now));
                        diff.add("+ " + name + " = " + shown(name, now));
                    }
                }
                for (String name : GeminiCli.VARIABLES) {
                    if (seen.contains(name) || !vars.containsKey(name)) continue;
                    lines.add(name + "=" + dotEnvValue(vars.get(name)));
                    diff.add("+ " + name + " = " + shown(name, vars.get(name)));
                }
                if (diff.isEmpty()) return new Edit(path, before, before, diff);
                boolean blank = lines.stream().allMatch(String::isBlank);
                return new Edit(path, before, blank && vars.isEmpty() ? null : String.join("\n", lines) + "\n", diff);
            }

            /** NAME=value, with an optional `export `, as dotenv reads it (a # after the value starts a comment). */
            static final Pattern DOTENV_LINE = Pattern.compile("\\s*(?:export\\s+)?([\\w.-]+)\\s*=(.*)");

            private static String unquote(String v) {
                if (v.length() >= 2 && "'\"`".indexOf(v.charAt(0)) >= 0 && v.charAt(v.length() - 1) == v.charAt(0)) return v.substring(1, v.length() - 1);
                int hash = v.indexOf(" #");
                return hash < 0 ? v : v.substring(0, hash).strip();
            }

            /** A value dotenv reads back as it is: bare when plain, else in the first quote it does not contain. */
            static String dotEnvValue(String v) {
                if (v.matches("[A-Za-z0-9_./:@+=-]*")) return v;
                if (v.contains("\n") || v.contains("\r")) throw new UserFacingException("a value with a line break cannot go into a .env file");
                for (char q : new char[] {'\'', '"', '`'}) if (v.indexOf(q) < 0) return q + v + q;
                throw new UserFacingException("a value with all three quote characters cannot go into a .env file");
            }

            private static String shownEntry(JsonNode entry) {
                ObjectNode copy = entry.deepCopy();
                JsonNode options = copy.path("options");
                if (options instanceof ObjectNode o && o.has("apiKey")) o.put("apiKey", shown("apiKey", o.path("apiKey").asText()));
                return Json.write(copy);
            }

            /** A file copilot-api owns whole (Codex's profile): replaced, or deleted with null. */
            static Edit ownFile(Path path, String text) throws IOException {
                String before = Files.exists(path) ? Files.readString(path) : null;
                List<String> diff = new ArrayList<>();
                List<String> old = before == null ? List.of() : before.lines().toList();
                List<String> now = text == null ? List.of() : text.lines().toList();
                for (String l : old) if (!now.contains(l)) diff.add("- " + shownLine(l));
                for (String l : now) if (!old.contains(l)) diff.add("+ " + shownLine(l));
                return new Edit(path, before, text, diff);
            }

            private static ObjectNode parseObject(Path path, String text) {
                if (text == null || text.isBlank()) return Json.object();
                try {
                    JsonNode node = JSON.readTree(text);
                    if (node instanceof ObjectNode o) return o;
                } catch (JsonProcessingException e) {
                    Logs.log().debug("{} is not JSON: {}", path, describe(e));
                }
                throw new UserFacingException(path + " is not a JSON object; fix it by hand, nothing was changed");
            }

            static String shown(String name, String value) {
                return name.matches("(?i).*(token|key).*") && !value.equals(NO_KEY) ? "***" : value;
            }

            static String shownLine(String line) {
                int eq = line.indexOf('=');
                return eq < 0 || !shown(line.substring(0, eq).trim(), "").equals("***") ? line : line.substring(0, eq + 1) + " ***";
            }
        }
    }

    @Command(name = "service", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
        description = {"Run the server in the background as your own service: install, uninstall, status, logs.",
            "A systemd user unit on Linux, a launchd agent on macOS, a task at logon on Windows."},
        subcommands = {ServiceCommand.Install.class, ServiceCommand.Uninstall.class, ServiceCommand.Status.class, ServiceCommand.ShowLogs.class})
    static final class ServiceCommand implements Callable<Integer> {
        @CommandLine.Spec CommandLine.Model.CommandSpec spec;

        @Override
        public Integer call() {
            spec.commandLine().usage(System.out);
            return 0;
        }

        @Command(name = "install", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
            description = {"Install and start the service; the options after install are `start`'s (e.g. --port 4242 --api-key KEY).",
                "API keys, the GitHub token and the proxy and CA variables of this shell go to a file only you can read."})
        static final class Install implements Callable<Integer> {
            @CommandLine.Spec CommandLine.Model.CommandSpec spec;

            @Option(names = "--dry-run", description = "Print the files (secrets as ***) instead of writing them.")
            boolean dryRun;

            @Option(names = "--no-start", description = "Write the files, but leave the service manager alone (start it later).")
            boolean noStart;

            @Option(names = "--jar", paramLabel = "JAR", description = "The exported jar to copy into the data directory (default: the jar this runs from; run by JBang, its class path bundled into one).")
            Path jar;

            @Option(names = "--os", paramLabel = "OS",
                description = "linux, macos or windows: whose files to make (default: this system's); another system's only with --dry-run.")
            Service.Os os;

            @Option(names = "--java", paramLabel = "JAVA", description = "The java the service starts (default: the one running this).")
            String java;

            @CommandLine.Unmatched
            List<String> startOptions = new ArrayList<>();

            @Override
            public Integer call() throws IOException, InterruptedException {
                Service.Os here = Service.Os.current();
                Service.Os target = os == null ? here : os;
                if (target != here && !dryRun) {
                    throw new CommandLine.ParameterException(spec.commandLine(), "--os " + target.label + " goes with --dry-run: this is " + here.label);
                }
                if (java != null && !target.isAbsolute(java)) {
                    throw new CommandLine.ParameterException(spec.commandLine(), "--java takes an absolute path on " + target.label + ", not '" + java + "'");
                }
                Map<String, String> env = System.getenv();
                Service.Layout layout = Service.Layout.of(target, env);
                Service.Launch launch;
                try {
                    launch = Service.Launch.of(layout, java != null ? java : target.text(Service.defaultJava(target)), startOptions, env);
                } catch (UserFacingException e) {
                    throw new CommandLine.ParameterException(spec.commandLine(), e.getMessage());
                }
                List<Service.File> files = layout.files(launch, env);
                if (dryRun) {
                    for (Service.File f : layout.files(launch.shown(), env)) {
                        System.out.println("# " + f.title(target) + "\n" + f.text().stripTrailing());
                    }
                    return 0;
                }
                if (!noStart) target.requireManager();
                Path source = jar != null ? jar : Service.ownJar(layout);
                Service.write(layout, files, source);
                if (noStart) {
                    System.out.println("not started (--no-start): " + target.startHint());
                    return 0;
                }
                target.register(layout, files);
                System.out.println("started; `copilot-api service status` shows it, `copilot-api service logs` its log");
                return 0;
            }
        }

        @Command(name = "uninstall", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
            description = "Stop the service and remove everything install wrote (the unit, agent or task, its environment, the jar).")
        static final class Uninstall implements Callable<Integer> {
            @Option(names = "--no-start", description = "Leave the service manager alone; only remove the files.")
            boolean noStart;

            @Override
            public Integer call() throws IOException, InterruptedException {
                Service.Os os = Service.Os.current();
                Service.Layout layout = Service.Layout.of(os, System.getenv());
                boolean installed = Files.exists(layout.marker());
                if (!noStart && installed) {
                    os.requireManager();
                    os.unregister(layout);
                }
                boolean any = false;
                for (Path p : layout.written()) {
                    if (Files.deleteIfExists(p)) {
                        System.out.println("removed " + os.text(p));
                        any = true;
                    }
                }
                if (layout.envFile() != null) {
                    try (var left = Files.list(layout.envFile().getParent())) {
                        if (left.findAny().isEmpty()) Files.delete(layout.envFile().getParent());
                    } catch (java.nio.file.NoSuchFileException gone) {
                        Logs.log().debug("no {} to remove", gone.getFile());
                    }
                }
                if (!any) System.out.println("not installed: nothing to remove");
                else if (!noStart && os == Service.Os.LINUX) Service.Systemd.systemctl("daemon-reload");
                return 0;
            }
        }

        @Command(name = "status", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
            description = "Say whether the service is installed and running, its port and where its log is.")
        static final class Status implements Callable<Integer> {
            @Override
            public Integer call() throws IOException, InterruptedException {
                Service.Os os = Service.Os.current();
                Service.Layout layout = Service.Layout.of(os, System.getenv());
                if (!Files.exists(layout.marker())) {
                    System.out.println("not installed (`copilot-api service install` installs it)");
                    return 3;
                }
                String where = os.text(layout.marker());
                int port = Service.port(Files.readString(layout.marker()));
                Optional<String> missing = os.managerProblem();
                if (missing.isPresent()) {
                    System.out.println("installed (" + where + ", port " + port + "), but " + missing.get() + ", so it is not running");
                    return 1;
                }
                System.out.println("installed: " + where);
                System.out.println("running: " + os.state());
                System.out.println("port: " + port);
                System.out.println("log: " + (layout.log() == null ? "journalctl --user -u " + Service.NAME : os.text(layout.log()))
                    + " (or `copilot-api service logs`)");
                return 0;
            }
        }

        @Command(name = "logs", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
            description = "Show the service's log (journalctl --user on Linux, the log file on macOS and Windows).")
        static final class ShowLogs implements Callable<Integer> {
            @Option(names = {"-n", "--lines"}, paramLabel = "N", defaultValue = "200", description = "How many lines (default: ${DEFAULT-VALUE}).")
            int lines;

            @Option(names = {"-f", "--follow"}, description = "Keep printing new lines.")
            boolean follow;

            @Override
            public Integer call() throws IOException, InterruptedException {
                Service.Os os = Service.Os.current();
                Service.Layout layout = Service.Layout.of(os, System.getenv());
                if (layout.log() != null) return Service.showFile(layout.log(), lines, follow);
                os.managerProblem().ifPresent(problem -> {
                    throw new UserFacingException(problem + ", so there is no service journal to show");
                });
                if (!Service.onPath("journalctl")) throw new UserFacingException("no journalctl here: the service log lives in the systemd journal");
                List<String> cmd = new ArrayList<>(List.of("journalctl", "--user", "-u", Service.NAME, "-n", String.valueOf(lines), "--no-pager"));
                if (follow) cmd.add("-f");
                return new ProcessBuilder(cmd).inheritIO().start().waitFor();
            }
        }
    }

    /**
     * `service`: the files each system's service manager reads (a systemd user unit, a launchd agent, a Task Scheduler
     * task with its batch file), the command line and environment they start, and the manager's own commands.
     */
    static final class Service {
        static final String NAME = "copilot-api";
        /** As the script header's //JAVA_OPTIONS line sets them. */
        static final List<String> JVM_OPTIONS = List.of("-XX:+UseSerialGC", "-Xms32m", "-Xmx512m");
        /** The shell variables that reach the service: proxies and certificates, nothing else. */
        static final List<String> PASSED_VARIABLES = List.of("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
            "SSL_CERT_FILE", "SSL_CERT_DIR", "JAVA_TOOL_OPTIONS", "COPILOT_API_HOME");

        enum Os {
            LINUX("linux"), MACOS("macos"), WINDOWS("windows");

            final String label;

            Os(String label) {
                this.label = label;
            }

            static Os current() {
                String name = System.getProperty("os.name").toLowerCase(Locale.ROOT);
                return name.contains("mac") || name.contains("darwin") ? MACOS : name.startsWith("windows") ? WINDOWS : LINUX;
            }

            /** A path as this system writes it, also when another system prints it (--dry-run --os windows on Linux). */
            String text(Path p) {
                return this == WINDOWS && java.io.File.separatorChar == '/' ? p.toString().replace('/', '\\') : p.toString();
            }

            /** A drive (C:\...) or a share (\\server\...) on Windows, /... elsewhere: a service manager starts programs by absolute path. */
            boolean isAbsolute(String path) {
                return this == WINDOWS ? path.matches("(?s)([A-Za-z]:\\\\|\\\\\\\\).*") : path.startsWith("/");
            }

            /** Why this system's service manager cannot be used here, if it cannot. */
            Optional<String> managerProblem() throws IOException, InterruptedException {
                return switch (this) {
                    case LINUX -> Systemd.problem();
                    case MACOS -> onPath("launchctl") ? Optional.empty() : Optional.of("no launchctl here");
                    case WINDOWS -> onPath("schtasks.exe") ? Optional.empty() : Optional.of("no schtasks.exe here");
                };
            }

            void requireManager() throws IOException, InterruptedException {
                Optional<String> problem = managerProblem();
                if (problem.isPresent()) throw new UserFacingException(problem.get() + "; use --no-start to write the files only");
            }

            String startHint() {
                return switch (this) {
                    case LINUX -> "systemctl --user daemon-reload && systemctl --user enable --now " + NAME;
                    case MACOS -> "launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/" + Launchd.LABEL + ".plist";
                    case WINDOWS -> "schtasks /Create /TN " + NAME + " /XML TASK.xml, then schtasks /Run /TN " + NAME;
                };
            }

            void register(Layout layout, List<File> files) throws IOException, InterruptedException {
                switch (this) {
                    case LINUX -> {
                        Systemd.systemctl("daemon-reload");
                        Systemd.systemctl("enable", "--now", NAME);
                    }
                    case MACOS -> {
                        run(false, "launchctl", "bootout", Launchd.domain() + "/" + Launchd.LABEL);
                        run(true, "launchctl", "bootstrap", Launchd.domain(), layout.definition().toString());
                    }
                    case WINDOWS -> WindowsTask.register(files);
                }
            }

            void unregister(Layout layout) throws IOException, InterruptedException {
                switch (this) {
                    case LINUX -> Systemd.systemctl("disable", "--now", NAME);
                    case MACOS -> run(false, "launchctl", "bootout", Launchd.domain() + "/" + Launchd.LABEL);
                    case WINDOWS -> {
                        run(false, "schtasks.exe", "/End", "/TN", NAME);
                        run(true, "schtasks.exe", "/Delete", "/TN", NAME, "/F");
                    }
                }
            }

            /** Running or not, in the manager's words. */
            String state() throws IOException, InterruptedException {
                return switch (this) {
                    case LINUX -> run(false, "systemctl", "--user", "is-active", NAME).lines().findFirst().orElse("unknown");
                    case MACOS -> run(false, "launchctl", "print", Launchd.domain() + "/" + Launchd.LABEL).lines().map(String::strip)
                        .filter(l -> l.startsWith("state = ")).findFirst().map(l -> l.substring(8)).orElse("not loaded");
                    case WINDOWS -> run(false, "schtasks.exe", "/Query", "/TN", NAME, "/FO", "LIST").lines()
                        .filter(l -> l.startsWith("Status:")).findFirst().map(l -> l.substring(7).strip()).orElse("unknown");
                };
            }
        }

        /** Where each system's files go: what the manager reads, the environment beside it, the jar, the log (null: the journal). */
        record Layout(Os os, Path definition, Path envFile, Path jar, Path log, Path dataDir) {
            static Layout of(Os os, Map<String, String> env) {
                Path home = ClientSetup.home(env);
                Path data = Settings.dataDir(env);
                Path jar = data.resolve(NAME + ".jar");
                return switch (os) {
                    case LINUX -> {
                        Path config = Optional.ofNullable(env.get("XDG_CONFIG_HOME")).filter(x -> !x.isBlank() && Path.of(x).isAbsolute()).map(Path::of)
                            .orElse(home.resolve(".config"));
                        yield new Layout(os, config.resolve("systemd").resolve("user").resolve(NAME + ".service"),
                            config.resolve(NAME).resolve("service.env"), jar, null, data);
                    }
                    case MACOS -> new Layout(os, home.resolve("Library").resolve("LaunchAgents").resolve(Launchd.LABEL + ".plist"), null, jar,
                        home.resolve("Library").resolve("Logs").resolve(NAME + ".log"), data);
                    case WINDOWS -> new Layout(os, null, data.resolve("service.cmd"), jar, data.resolve("service.log"), data);
                };
            }

            /** The file whose presence means installed, and which names the port. */
            Path marker() {
                return definition != null ? definition : envFile;
            }

            /** Everything install writes and uninstall removes (the log is the service's own, and stays). */
            List<Path> written() {
                List<Path> out = new ArrayList<>();
                if (definition != null) out.add(definition);
                if (envFile != null) out.add(envFile);
                out.add(jar);
                return out;
            }

            /** The files for this launch; env names the Windows account the task is for and the system folder. */
            List<File> files(Launch launch, Map<String, String> env) {
                return switch (os) {
                    case LINUX -> List.of(new File(definition, Systemd.unit(this, launch), false), new File(envFile, Systemd.envText(launch), true));
                    case MACOS -> List.of(new File(definition, Launchd.plist(this, launch), true));
                    case WINDOWS -> List.of(new File(envFile, WindowsTask.script(this, launch), true), new File(null, WindowsTask.xml(this, env), false));
                };
            }
        }

        /** One file install writes (path null: handed to the manager, not kept), and whether only its owner may read it. */
        record File(Path path, String text, boolean secret) {
            String title(Os os) {
                if (path == null) return "the task, registered with: schtasks /Create /TN " + NAME + " /XML FILE /F";
                return os.text(path) + (secret ? " (readable by you only)" : "");
            }
        }

        /** What the service runs: java, its options, -jar, the jar, start and its options; and the variables it gets. */
        record Launch(List<String> command, Map<String, String> env) {
            /** Checks the start options as `start` would, and moves the secrets among them into the environment. */
            static Launch of(Layout layout, String java, List<String> startOptions, Map<String, String> shellEnv) {
                List<String> args = new ArrayList<>();
                List<String> keys = new ArrayList<>();
                Map<String, String> env = new LinkedHashMap<>();
                for (int i = 0; i < startOptions.size(); i++) {
                    String a = startOptions.get(i);
                    String name = a.contains("=") ? a.substring(0, a.indexOf('=')) : a;
                    boolean secret = name.equals("--api-key") || name.equals("--github-token") || name.equals("-g");
                    if (!secret) {
                        args.add(a);
                        continue;
                    }
                    String value = a.contains("=") ? a.substring(a.indexOf('=') + 1) : i + 1 < startOptions.size() ? startOptions.get(++i) : null;
                    if (value == null) throw new UserFacingException(name + " needs a value");
                    if (name.equals("--api-key")) keys.add(value);
                    else env.put("COPILOT_API_GITHUB_TOKEN", value);
                }
                try {
                    new CommandLine(new StartCommand()).parseArgs(args.toArray(String[]::new));
                } catch (CommandLine.ParameterException e) {
                    throw new UserFacingException("not a start option: " + e.getMessage());
                }
                if (!keys.isEmpty()) env.put("COPILOT_API_KEYS", String.join(",", keys));
                for (String v : PASSED_VARIABLES) if (shellEnv.containsKey(v) && !shellEnv.get(v).isBlank()) env.put(v, shellEnv.get(v));
                // the service finds the login where this shell would, whatever HOME the manager gives it
                env.put("COPILOT_API_HOME", layout.os().text(layout.dataDir()));
                List<String> command = new ArrayList<>();
                command.add(java);
                command.addAll(JVM_OPTIONS);
                command.addAll(List.of("-jar", layout.os().text(layout.jar()), "start"));
                command.addAll(args);
                return new Launch(List.copyOf(command), env);
            }

            /** The same with secrets as *** and proxies without their user-info: what --dry-run prints. */
            Launch shown() {
                Map<String, String> out = new LinkedHashMap<>();
                env.forEach((k, v) -> out.put(k, k.matches(".*(KEYS|TOKEN)") ? "***" : k.toLowerCase(Locale.ROOT).endsWith("_proxy") ? Http.shown(v) : v));
                return new Launch(command, out);
            }
        }

        /** The port the start options name, in a unit, plist or batch file; else the default. */
        static int port(String text) {
            java.util.regex.Matcher m = Pattern.compile("(?:--port|-p)(?:[ =]\"?|</string>\\s*<string>)(\\d+)").matcher(text);
            return m.find() ? Integer.parseInt(m.group(1)) : DEFAULT_PORT;
        }

        static Path defaultJava(Os os) {
            return Path.of(System.getProperty("java.home"), "bin", os == Os.WINDOWS ? "java.exe" : "java");
        }

        /**
         * The jar the service runs: this one when it is an exported (fat) jar with its dependencies inside; else (run by
         * JBang from its cache, or a portable jar with a lib folder) the class path bundled into the data directory's jar.
         */
        static Path ownJar(Layout layout) throws IOException {
            Path self;
            try {
                self = Path.of(CopilotApi.class.getProtectionDomain().getCodeSource().getLocation().toURI());
                Path picocli = Path.of(CommandLine.class.getProtectionDomain().getCodeSource().getLocation().toURI());
                if (self.toString().endsWith(".jar") && self.equals(picocli)) return self;
            } catch (java.net.URISyntaxException | RuntimeException e) {
                throw new UserFacingException("cannot tell which jar this runs from (" + describe(e) + "): pass --jar with an exported jar");
            }
            Bundle.write(Bundle.classPath(), layout.jar());
            System.out.println("bundled " + layout.os().text(layout.jar()) + " from the class path this runs with");
            return layout.jar();
        }

        /**
         * One runnable jar made from a class path, as `jbang export fatjar` makes it: every entry once (the first
         * wins), service files joined, signatures and module descriptors left out, this program as Main-Class.
         */
        static final class Bundle {
            /** java.class.path, plus the Class-Path a jar's manifest names (a portable jar's lib folder). */
            static List<Path> classPath() throws IOException {
                Set<Path> out = new LinkedHashSet<>();
                for (String entry : System.getProperty("java.class.path").split(java.io.File.pathSeparator)) {
                    Path p = Path.of(entry).toAbsolutePath();
                    if (!entry.endsWith(".jar") || !Files.isRegularFile(p)) throw new UserFacingException("cannot bundle " + entry + ": pass --jar with an exported jar");
                    out.add(p);
                    try (java.util.jar.JarFile jar = new java.util.jar.JarFile(p.toFile())) {
                        String more = jar.getManifest() == null ? null : jar.getManifest().getMainAttributes().getValue("Class-Path");
                        if (more != null) for (String m : more.trim().split("\\s+")) out.add(p.resolveSibling(m).normalize());
                    }
                }
                return List.copyOf(out);
            }

            static boolean leftOut(String name) {
                String upper = name.toUpperCase(Locale.ROOT);
                return upper.equals("META-INF/MANIFEST.MF") || upper.equals("META-INF/INDEX.LIST") || name.endsWith("module-info.class")
                    || upper.startsWith("META-INF/") && upper.matches("META-INF/[^/]+\\.(SF|RSA|DSA|EC)");
            }

            static void write(List<Path> jars, Path target) throws IOException {
                java.util.jar.Manifest manifest = new java.util.jar.Manifest();
                manifest.getMainAttributes().put(java.util.jar.Attributes.Name.MANIFEST_VERSION, "1.0");
                manifest.getMainAttributes().put(java.util.jar.Attributes.Name.MAIN_CLASS, CopilotApi.class.getName());
                manifest.getMainAttributes().put(java.util.jar.Attributes.Name.MULTI_RELEASE, "true");
                Files.createDirectories(target.getParent());
                Path tmp = Files.createTempFile(target.getParent(), ".bundle", ".tmp");
                Map<String, java.io.ByteArrayOutputStream> services = new TreeMap<>();
                Set<String> seen = new HashSet<>();
                try (java.util.jar.JarOutputStream out = new java.util.jar.JarOutputStream(Files.newOutputStream(tmp), manifest)) {
                    for (Path jar : jars) {
                        try (java.util.jar.JarFile in = new java.util.jar.JarFile(jar.toFile())) {
                            for (java.util.jar.JarEntry e : java.util.Collections.list(in.entries())) {
                                String name = e.getName();
                                boolean service = name.startsWith("META-INF/services/") && !e.isDirectory();
                                if (leftOut(name) || !service && !seen.add(name)) continue;
                                if (service) {
                                    java.io.ByteArrayOutputStream joined = services.computeIfAbsent(name, n -> new java.io.ByteArrayOutputStream());
                                    try (InputStream body = in.getInputStream(e)) {
                                        body.transferTo(joined);
                                    }
                                    joined.write('\n');
                                    continue;
                                }
                                out.putNextEntry(new java.util.jar.JarEntry(name));
                                if (!e.isDirectory()) {
                                    try (InputStream body = in.getInputStream(e)) {
                                        body.transferTo(out);
                                    }
                                }
                                out.closeEntry();
                            }
                        }
                    }
                    for (var service : services.entrySet()) {
                        out.putNextEntry(new java.util.jar.JarEntry(service.getKey()));
                        service.getValue().writeTo(out);
                        out.closeEntry();
                    }
                } catch (IOException | RuntimeException e) {
                    Files.deleteIfExists(tmp);
                    throw e;
                }
                Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            }
        }

        /** Copies the jar into the data directory and writes each kept file (the secret ones readable by their owner only). */
        static void write(Layout layout, List<File> files, Path source) throws IOException {
            if (!Files.isRegularFile(source)) throw new UserFacingException("no jar at " + source);
            Files.createDirectories(layout.jar().getParent());
            if (!source.toAbsolutePath().equals(layout.jar().toAbsolutePath())) {
                Files.copy(source, layout.jar(), StandardCopyOption.REPLACE_EXISTING);
            }
            List<String> wrote = new ArrayList<>();
            for (File f : files) {
                if (f.path() == null) continue;
                Files.createDirectories(f.path().getParent());
                Path tmp = Files.createTempFile(f.path().getParent(), ".service", ".tmp");
                if (f.secret()) Posix.restrict(tmp, "rw-------");
                Files.writeString(tmp, f.text());
                Files.move(tmp, f.path(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                wrote.add(layout.os().text(f.path()));
            }
            wrote.add(layout.os().text(layout.jar()));
            System.out.println("wrote " + String.join(", ", wrote));
        }

        /** The last lines of a log file, then (with follow) what is added to it. */
        static int showFile(Path log, int lines, boolean follow) throws IOException, InterruptedException {
            if (!Files.exists(log)) throw new UserFacingException("no log at " + log + " yet: is the service installed and started?");
            List<String> all = Files.readAllLines(log);
            all.subList(Math.max(0, all.size() - lines), all.size()).forEach(System.out::println);
            long read = Files.size(log);
            while (follow) {
                Thread.sleep(500);
                long size = Files.size(log);
                if (size < read) read = 0;
                if (size == read) continue;
                try (var ch = Files.newByteChannel(log)) {
                    ByteBuffer buf = ByteBuffer.allocate((int) Math.min(size - read, 1 << 20));
                    ch.position(read);
                    read += ch.read(buf);
                    System.out.print(new String(buf.array(), 0, buf.position(), UTF_8));
                }
            }
            return 0;
        }

        static boolean onPath(String program) {
            for (String dir : Optional.ofNullable(System.getenv("PATH")).orElse("").split(java.io.File.pathSeparator)) {
                if (!dir.isEmpty() && Files.isExecutable(Path.of(dir, program))) return true;
            }
            return false;
        }

        /** Runs a manager command and answers its output; with check, a failure is the error. */
        static String run(boolean check, String... cmd) throws IOException, InterruptedException {
            Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
            String out = new String(p.getInputStream().readAllBytes(), UTF_8).strip();
            if (p.waitFor() != 0 && check) throw new UserFacingException(String.join(" ", cmd) + " failed: " + out);
            return out;
        }

        /** Linux: a systemd user unit, and an environment file beside it. */
        static final class Systemd {
            static String unit(Layout layout, Launch launch) {
                return """
                    [Unit]
                    Description=copilot-api: GitHub Copilot as an OpenAI- and Anthropic-compatible API
                    After=network-online.target
                    Wants=network-online.target

                    [Service]
                    Type=simple
                    EnvironmentFile=-%s
                    ExecStart=%s
                    Restart=on-failure
                    RestartSec=5

                    [Install]
                    WantedBy=default.target
                    """.formatted(layout.envFile(), execLine(launch.command()));
            }

            static String envText(Launch launch) {
                StringBuilder b = new StringBuilder("# written by `copilot-api service install`; removed by `copilot-api service uninstall`\n");
                launch.env().forEach((k, v) -> b.append(k).append('=').append(quote(v)).append('\n'));
                return b.toString();
            }

            /** systemd's quoting: each word in double quotes where it needs them; % and $ doubled so they stay literal. */
            static String execLine(List<String> words) {
                List<String> out = new ArrayList<>();
                for (String w : words) {
                    String escaped = w.replace("%", "%%").replace("$", "$$");
                    out.add(escaped.matches("[A-Za-z0-9_./:@=+,-]+") ? escaped : "\"" + escaped.replace("\\", "\\\\").replace("\"", "\\\"") + "\"");
                }
                return String.join(" ", out);
            }

            static String quote(String v) {
                return v.matches("[A-Za-z0-9_./:@=+,*-]*") ? v : "\"" + v.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
            }

            /** Why there is no systemd user manager to talk to (a container, WSL without systemd), if there is none. */
            static Optional<String> problem() throws IOException, InterruptedException {
                if (!onPath("systemctl")) return Optional.of("no systemctl here, so no systemd user services");
                Process p = new ProcessBuilder("systemctl", "--user", "show-environment").redirectErrorStream(true).start();
                String out = new String(p.getInputStream().readAllBytes(), UTF_8).strip();
                if (p.waitFor() == 0) return Optional.empty();
                return Optional.of("no systemd user manager here (" + out.lines().findFirst().orElse("systemctl --user failed") + ")");
            }

            static void systemctl(String... args) throws IOException, InterruptedException {
                List<String> cmd = new ArrayList<>(List.of("systemctl", "--user"));
                cmd.addAll(List.of(args));
                run(true, cmd.toArray(String[]::new));
            }
        }

        /** macOS: a launchd agent, its environment inside (so the plist is readable by its owner only), its log in ~/Library/Logs. */
        static final class Launchd {
            static final String LABEL = "local.copilot-api";

            static String plist(Layout layout, Launch launch) {
                StringBuilder b = new StringBuilder("""
                    <?xml version="1.0" encoding="UTF-8"?>
                    <!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
                    <plist version="1.0">
                    <dict>
                    """);
                entry(b, "Label", "<string>" + xml(LABEL) + "</string>");
                StringBuilder args = new StringBuilder("<array>\n");
                for (String w : launch.command()) args.append("    <string>").append(xml(w)).append("</string>\n");
                entry(b, "ProgramArguments", args.append("  </array>").toString());
                StringBuilder vars = new StringBuilder("<dict>\n");
                launch.env().forEach((k, v) -> vars.append("    <key>").append(xml(k)).append("</key>\n    <string>").append(xml(v)).append("</string>\n"));
                entry(b, "EnvironmentVariables", vars.append("  </dict>").toString());
                entry(b, "RunAtLoad", "<true/>");
                entry(b, "KeepAlive", "<dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>");
                entry(b, "ThrottleInterval", "<integer>5</integer>");
                String log = "<string>" + xml(layout.log().toString()) + "</string>";
                entry(b, "StandardOutPath", log);
                entry(b, "StandardErrorPath", log);
                return b.append("</dict>\n</plist>\n").toString();
            }

            private static void entry(StringBuilder b, String key, String value) {
                b.append("  <key>").append(key).append("</key>\n  ").append(value).append('\n');
            }

            /** The user's GUI domain, where agents of a logged-in user live. */
            static String domain() throws IOException, InterruptedException {
                return "gui/" + run(true, "id", "-u");
            }
        }

        /**
         * Windows: a Task Scheduler task started at the user's logon and restarted on failure, which runs a batch file
         * in the data directory (the profile, readable by the user) holding the variables and the command line.
         */
        static final class WindowsTask {
            static final String NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task";

            static String script(Layout layout, Launch launch) {
                StringBuilder b = new StringBuilder("@echo off\r\n");
                b.append("rem written by `copilot-api service install`; removed by `copilot-api service uninstall`\r\n");
                launch.env().forEach((k, v) -> b.append("set \"").append(k).append('=').append(batch(v, k)).append("\"\r\n"));
                List<String> words = new ArrayList<>();
                for (String w : launch.command()) words.add(batchWord(w));
                String log = layout.os().text(layout.log());
                return b.append(String.join(" ", words)).append(" >> \"").append(batch(log, "the log's path")).append("\" 2>&1\r\n").toString();
            }

            /** % doubled so it stays literal; a double quote cannot be carried at all. */
            static String batch(String v, String where) {
                if (v.contains("\"")) throw new UserFacingException("a double quote cannot pass through the Windows task's batch file: take it out of " + where);
                return v.replace("%", "%%");
            }

            static String batchWord(String w) {
                String v = batch(w, "the start options");
                return v.matches("[A-Za-z0-9_./:@+\\\\-]+") ? v : "\"" + v + "\"";
            }

            static String xml(Layout layout, Map<String, String> env) {
                String user = env.get("USERNAME") == null ? null
                    : env.get("USERDOMAIN") == null ? env.get("USERNAME") : env.get("USERDOMAIN") + "\\" + env.get("USERNAME");
                String root = Optional.ofNullable(env.get("SystemRoot")).filter(r -> !r.isBlank()).orElse("C:\\Windows");
                String script = layout.os().text(layout.envFile());
                return """
                    <?xml version="1.0" encoding="UTF-16"?>
                    <Task version="1.2" xmlns="%s">
                      <RegistrationInfo>
                        <Description>copilot-api: GitHub Copilot as an OpenAI- and Anthropic-compatible API</Description>
                      </RegistrationInfo>
                      <Triggers>
                        <LogonTrigger>
                          <Enabled>true</Enabled>
                    %s    </LogonTrigger>
                      </Triggers>
                      <Principals>
                        <Principal id="Author">
                          <LogonType>InteractiveToken</LogonType>
                          <RunLevel>LeastPrivilege</RunLevel>
                        </Principal>
                      </Principals>
                      <Settings>
                        <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
                        <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
                        <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
                        <StartWhenAvailable>true</StartWhenAvailable>
                        <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
                        <RestartOnFailure>
                          <Interval>PT1M</Interval>
                          <Count>999</Count>
                        </RestartOnFailure>
                        <Enabled>true</Enabled>
                      </Settings>
                      <Actions Context="Author">
                        <Exec>
                          <Command>%s</Command>
                          <Arguments>%s</Arguments>
                          <WorkingDirectory>%s</WorkingDirectory>
                        </Exec>
                      </Actions>
                    </Task>
                    """.formatted(NAMESPACE, user == null ? "" : "      <UserId>" + Service.xml(user) + "</UserId>\n",
                        Service.xml(root + "\\System32\\cmd.exe"), Service.xml("/d /c \"\"" + script + "\"\""),
                        Service.xml(layout.os().text(layout.dataDir())));
            }

            /** schtasks reads the task from a UTF-16 file: written, registered, deleted; then the task is started. */
            static void register(List<File> files) throws IOException, InterruptedException {
                String task = files.stream().filter(f -> f.path() == null).findFirst().orElseThrow().text();
                Path tmp = Files.createTempFile(NAME + "-task", ".xml");
                try {
                    Files.writeString(tmp, "\uFEFF" + task.replace("\n", "\r\n"), java.nio.charset.StandardCharsets.UTF_16LE);
                    run(true, "schtasks.exe", "/Create", "/TN", NAME, "/XML", tmp.toString(), "/F");
                } finally {
                    Files.deleteIfExists(tmp);
                }
                run(true, "schtasks.exe", "/Run", "/TN", NAME);
            }
        }

        static String xml(String s) {
            return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\"", "&quot;");
        }
    }

    // ==== 2. Configuration ====

    enum AccountType {
        individual("individual", "https://api.githubcopilot.com"),
        business("business", "https://api.business.githubcopilot.com"),
        enterprise("enterprise", "https://api.enterprise.githubcopilot.com");

        final String wire;
        final String copilotBase;

        AccountType(String wire, String copilotBase) {
            this.wire = wire;
            this.copilotBase = copilotBase;
        }
    }

    /** Everything resolved from options and the environment, once. */
    record Settings(
        boolean verbose,
        boolean showToken,
        boolean proxyEnv,
        AccountType accountType,
        Optional<String> githubTokenOption,
        Optional<String> enterpriseHost,
        String githubUrl,
        String githubApiUrl,
        Optional<String> copilotUrlOverride,
        Path dataDir,
        EditorHeaders editor,
        Map<String, String> env) {

        static Settings from(CommonOptions o, Map<String, String> env) {
            Optional<String> enterprise = Optional.ofNullable(o.enterpriseUrl).map(Settings::bareHost).filter(h -> !h.isEmpty());
            enterprise.ifPresent(Settings::checkEnterpriseHost);
            String github = env.getOrDefault("COPILOT_API_GITHUB_URL",
                enterprise.map(h -> "https://" + h).orElse("https://github.com"));
            String githubApi = env.getOrDefault("COPILOT_API_GITHUB_API_URL",
                enterprise.map(Settings::enterpriseApi).orElse("https://api.github.com"));
            return new Settings(o.verbose, o.showToken, o.proxyEnv, o.accountType,
                Optional.ofNullable(o.githubToken).filter(t -> !t.isBlank()), enterprise,
                trimSlash(github), trimSlash(githubApi),
                Optional.ofNullable(env.get("COPILOT_API_COPILOT_URL")).filter(u -> !u.isBlank()).map(Settings::trimSlash),
                dataDir(env), EditorHeaders.from(env), Map.copyOf(env));
        }

        /** COPILOT_API_HOME, else $XDG_DATA_HOME/copilot-api, else $HOME/.local/share/copilot-api (the JVM's user.home ignores $HOME). */
        static Path dataDir(Map<String, String> env) {
            String ours = env.get("COPILOT_API_HOME");
            if (ours != null && !ours.isBlank()) return Path.of(ours).toAbsolutePath();
            String xdg = env.get("XDG_DATA_HOME");
            if (xdg != null && !xdg.isBlank() && Path.of(xdg).isAbsolute()) return Path.of(xdg, "copilot-api");
            String home = Optional.ofNullable(env.get("HOME")).filter(h -> !h.isBlank()).orElse(System.getProperty("user.home"));
            return Path.of(home, ".local", "share", "copilot-api");
        }

        Path tokenFile() {
            return dataDir.resolve("github_token");
        }

        /** True for the default data directory (named for copilot-api); false for one COPILOT_API_HOME names. */
        boolean ownsDataDir() {
            String ours = env.get("COPILOT_API_HOME");
            return ours == null || ours.isBlank();
        }

        /** The Copilot base URL when neither the override nor the token's endpoints.api gives one. */
        String copilotBaseFallback() {
            return enterpriseHost.map(h -> "https://copilot-api." + h).orElse(accountType.copilotBase);
        }

        /** A host name, with a port at most: a path or a query means the user pasted a page's address. */
        static void checkEnterpriseHost(String host) {
            if (!host.matches("[A-Za-z0-9.-]+(:\\d+)?")) {
                throw new UserFacingException("--enterprise-url takes a host such as acme.ghe.com (https:// may stand before it), not '"
                    + host + "'");
            }
        }

        /**
         * GitHub Enterprise Cloud with data residency (NAME.ghe.com) has its API on api.NAME.ghe.com; any other host is
         * taken as GitHub Enterprise Server, whose API is under /api/v3.
         */
        static String enterpriseApi(String host) {
            return host.toLowerCase(Locale.ROOT).endsWith(".ghe.com") ? "https://api." + host : "https://" + host + "/api/v3";
        }

        static String bareHost(String s) {
            return trimSlash(s.trim().replaceFirst("^https?://", ""));
        }

        static String trimSlash(String s) {
            return s.endsWith("/") ? s.substring(0, s.length() - 1) : s;
        }

        /** A repeatable option and its comma-separated environment variable: the variable's entries first. */
        static List<String> listOption(String envValue, List<String> options) {
            List<String> out = new ArrayList<>();
            for (String e : Optional.ofNullable(envValue).orElse("").split(",")) if (!e.isBlank()) out.add(e.trim());
            if (options != null) for (String o : options) if (o != null && !o.isBlank()) out.add(o.trim());
            return out;
        }
    }

    /** The editor identity Copilot requires on every call; versions overridable by environment. */
    record EditorHeaders(String vscodeVersion, String copilotChatVersion, String apiVersion, String intent) {
        static final String INTEGRATION_ID = "vscode-chat";

        static EditorHeaders from(Map<String, String> env) {
            return new EditorHeaders(
                env.getOrDefault("COPILOT_API_VSCODE_VERSION", "1.120.0"),
                env.getOrDefault("COPILOT_API_COPILOT_CHAT_VERSION", "0.58.0"),
                env.getOrDefault("COPILOT_API_GITHUB_API_VERSION", "2026-06-01"),
                env.getOrDefault("COPILOT_API_OPENAI_INTENT", "conversation-agent"));
        }

        String userAgent() {
            return "GitHubCopilotChat/" + copilotChatVersion;
        }

        /** The headers that name the editor, in the order it sends them. */
        Map<String, String> headers() {
            Map<String, String> h = new LinkedHashMap<>();
            h.put("editor-version", "vscode/" + vscodeVersion);
            h.put("editor-plugin-version", "copilot-chat/" + copilotChatVersion);
            h.put("user-agent", userAgent());
            h.put("x-github-api-version", apiVersion);
            return h;
        }

        Http.Call applyTo(Http.Call b) {
            headers().forEach(b::header);
            return b;
        }

        void describe(ObjectNode o) {
            o.put("editor-version", "vscode/" + vscodeVersion);
            o.put("editor-plugin-version", "copilot-chat/" + copilotChatVersion);
            o.put("user-agent", userAgent());
            o.put("x-github-api-version", apiVersion);
            o.put("openai-intent", intent);
            o.put("copilot-integration-id", INTEGRATION_ID);
        }
    }

    record ServerOptions(String host, int port, ModelRouting routing, Controls controls, BrowserGuard guard, Store.Options store) {
        ServerOptions(String host, int port) {
            this(host, port, ModelRouting.NONE, Controls.none(), BrowserGuard.loopback(host), Store.Options.DEFAULT);
        }
    }

    /** The user's say over model names: --model-map FROM=TO (wins over everything) and a fallback model. */
    record ModelRouting(Map<String, String> userMap, Optional<String> fallback) {
        static final ModelRouting NONE = new ModelRouting(Map.of(), Optional.empty());

        /** The name the user's map gives the one asked for, or the name as asked. */
        String mapped(String requested) {
            return userMap.getOrDefault(requested.trim(), requested);
        }

        static ModelRouting from(List<String> mapOptions, String fallbackOption, Map<String, String> env) {
            Map<String, String> map = new LinkedHashMap<>();
            for (String e : Settings.listOption(env.get("COPILOT_API_MODEL_MAP"), mapOptions)) {
                int eq = e.indexOf('=');
                if (eq <= 0 || eq == e.length() - 1) throw new UserFacingException("--model-map takes FROM=TO, got '" + e + "'");
                map.put(e.substring(0, eq).trim(), e.substring(eq + 1).trim());
            }
            String fallback = fallbackOption != null ? fallbackOption : env.get("COPILOT_API_FALLBACK_MODEL");
            return new ModelRouting(Map.copyOf(map), Optional.ofNullable(fallback).filter(f -> !f.isBlank()));
        }
    }

    /** Logging set-up for slf4j-simple; must run before the first logger is created (hence the holder). */
    static final class Logs {
        static final class Holder {
            static final Logger LOG = LoggerFactory.getLogger("copilot-api");
        }

        static Logger log() {
            return Holder.LOG;
        }

        static void configure(boolean verbose) {
            System.setProperty("org.slf4j.simpleLogger.showDateTime", "true");
            System.setProperty("org.slf4j.simpleLogger.dateTimeFormat", "HH:mm:ss");
            System.setProperty("org.slf4j.simpleLogger.showThreadName", "false");
            System.setProperty("org.slf4j.simpleLogger.showShortLogName", "true");
            System.setProperty("org.slf4j.simpleLogger.log.copilot-api", verbose ? "debug" : "info");
            System.setProperty("org.slf4j.simpleLogger.log.io.javalin", "warn");
            System.setProperty("org.slf4j.simpleLogger.log.org.eclipse.jetty", "warn");
        }
    }

    // ==== 3. Server and routes ====
    // Five namespaces: Serving (the composition root, the server, one record per request, the log, the browser guard,
    // request checks), Operator (keys, pacing, approval, stats, billing, cost, dashboard), Routes (the request pipeline
    // and one class per API), Streaming (the relay loop, its machines and the client watch) and ErrorShapes.

    // ==== 3.1 Serving: composition root, server, the request's record and log line, browser guard, request checks ====

    /** What every request meets before and after its route: the server, its record, its log line, the browser guard. */
    static final class Serving {
        private Serving() {}

        /**
         * The composition root: what `start`, the tests and the benchmark run, wired the same way; they differ only in
         * what they pass (settings, timeouts, how the GitHub token is found, server options). open() holds a Copilot
         * token (failing loudly when GitHub refuses); serve() listens.
         */
        record App(Settings settings, GitHubAuth auth, GitHubToken github, CopilotTokens tokens, CopilotClient copilot, ModelCatalog models)
                implements AutoCloseable {
            /** How the GitHub token is found: start's stored login or device flow, the token given to a test. */
            interface Login {
                GitHubToken token(GitHubAuth auth) throws InterruptedException;
            }

            static App open(Settings settings, Timeouts timeouts, Login login) throws InterruptedException {
                Http http = Http.create(settings);
                GitHubAuth auth = new GitHubAuth(settings, http);
                GitHubToken github = login.token(auth);
                CopilotTokens tokens = new CopilotTokens(settings, http, github);
                tokens.start();
                CopilotClient copilot = new CopilotClient(settings, http, tokens, timeouts);
                return new App(settings, auth, github, tokens, copilot, new ModelCatalog(copilot));
            }

            /** Starts the server; a port taken since start checked it gets the same sentence as one taken before. */
            Server serve(ServerOptions options) {
                return Ports.start(options.host(), options.port(), () -> Server.start(options, settings, copilot, models, auth, github));
            }

            /** Stops the token refreshes; the caller stops its server. */
            @Override
            public void close() {
                tokens.close();
            }
        }

        /** The Javalin server: routes for every surface, one error handler per surface, one log line per request. */
        static final class Server {
            static final long MAX_REQUEST_BYTES = 100L * 1024 * 1024;
            static final Duration IDLE_TIMEOUT = Duration.ofMinutes(10);
            /** Pending connections the kernel may queue; a burst of agent subprocesses overflows the default 50. */
            static final int ACCEPT_QUEUE = 1024;
            /** Without virtual threads each open stream holds a platform thread; Jetty's default cap of 250 would queue the rest. */
            static final int MAX_PLATFORM_THREADS = 1000;
            /** How long a pool thread may sit idle; past it the threads of a burst leave together, not one per minute. */
            static final Duration POOL_IDLE = Duration.ofSeconds(20);
            /** Jetty's acceptor, selectors and reserved threads live in the pool: with 8, an idle pool shrank under them. */
            static final int MIN_PLATFORM_THREADS = 16;

            private final Javalin app;
            private final String host;
            private final java.util.concurrent.atomic.AtomicInteger inFlight;
            private final LiveStreams streams;
            private final java.util.concurrent.CountDownLatch stopped = new java.util.concurrent.CountDownLatch(1);
            private final Store store;

            private Server(Javalin app, String host, java.util.concurrent.atomic.AtomicInteger inFlight, LiveStreams streams, Store store) {
                this.app = app;
                this.host = host;
                this.inFlight = inFlight;
                this.streams = streams;
                this.store = store;
            }

            static Server start(ServerOptions options, Settings settings, CopilotClient copilot, ModelCatalog models,
                    GitHubAuth github, GitHubToken githubToken) {
                Controls controls = options.controls();
                Pipeline pipeline = new Pipeline(copilot, models, controls);
                OpenAiRoutes openai = new OpenAiRoutes(pipeline, options.routing(), github, githubToken);
                AnthropicRoutes anthropic = new AnthropicRoutes(pipeline, options.routing());
                Store store = Store.unopened(options.store(), settings.dataDir());
                ResponsesState state = new ResponsesState(store);
                ResponsesRoutes responses = new ResponsesRoutes(pipeline, options.routing(), state);
                GeminiRoutes gemini = new GeminiRoutes(pipeline, options.routing());
                var inFlight = new java.util.concurrent.atomic.AtomicInteger();
                tellJettyTheCacheLine();
                Javalin app = Javalin.create(cfg -> {
                    cfg.startup.showJavalinBanner = false;
                    cfg.startup.showOldJavalinVersionWarning = false;
                    cfg.http.compressionStrategy = CompressionStrategy.NONE;
                    cfg.http.maxRequestSize = MAX_REQUEST_BYTES;
                    cfg.concurrency.useVirtualThreads = Threads.virtualThreadsAvailable();
                    cfg.router.ignoreTrailingSlashes = true;
                    if (!Threads.virtualThreadsAvailable()) {
                        cfg.jetty.threadPool = platformPool();
                    }
                    cfg.jetty.addConnector((server, http) -> {
                        var connector = new org.eclipse.jetty.server.ServerConnector(server, new org.eclipse.jetty.server.HttpConnectionFactory(http));
                        connector.setHost(options.host());
                        connector.setPort(options.port());
                        connector.setAcceptQueueSize(ACCEPT_QUEUE);
                        connector.setIdleTimeout(IDLE_TIMEOUT.toMillis());
                        return connector;
                    });
                    cfg.jetty.modifyServletContextHandler(handler -> handler.addFilter(WebSocketAsHttp.class, "/*",
                        java.util.EnumSet.of(jakarta.servlet.DispatcherType.REQUEST)));
                    cfg.requestLogger.http((ctx, ms) -> {
                        inFlight.decrementAndGet();
                        Exchange exchange = Exchange.of(ctx);
                        controls.billing().settle(exchange);
                        if (exchange.cost == null) exchange.cost = Cost.settle(exchange, ctx.res().getStatus(), models);
                        RequestLog.write(ctx, ms, controls.stats());
                        History.record(ctx, ctx.res().getStatus(), Math.round(ms), store);
                    });
                    cfg.routes.before(ctx -> {
                        inFlight.incrementAndGet();
                        Exchange.of(ctx).startedNanos = System.nanoTime();
                        try {
                            options.guard().check(ctx);
                        } catch (ApiError refused) {
                            controls.stats().refused(refused.code());
                            Exchange.of(ctx).note("refused: " + refused.code());
                            throw refused;
                        }
                        if (ctx.attribute(BrowserGuard.PREFLIGHT) != null) return;
                        controls.keys().check(ctx);
                        Requests.checkBody(ctx);
                    });
                    cfg.routes.after(ctx -> {
                        // a JSON answer not yet sent carries its cost, settled here once for the log and the history too;
                        // a stream's is settled when it ends, for the log and the history
                        Exchange exchange = Exchange.of(ctx);
                        if (!exchange.invokesModel || ctx.res().isCommitted() || ctx.status().getCode() >= 400) return;
                        exchange.cost = Cost.settle(exchange, ctx.status().getCode(), models);
                        exchange.cost.ifPresent(c -> ctx.header(Cost.HEADER, Cost.format(c.credits())));
                    });
                    cfg.routes.get("/", Dashboard::root);
                    cfg.routes.get("/dashboard", Dashboard::page);
                    cfg.routes.get("/favicon.ico", ctx -> ctx.status(204));
                    cfg.routes.get("/stats", ctx -> Requests.writeJson(ctx, controls.billing().withBudget(controls.stats().snapshot())
                        .set("store", store.status())));
                    cfg.routes.get("/history", ctx -> History.list(ctx, store));
                    cfg.routes.get("/history/summary", ctx -> History.summary(ctx, store, copilot));
                    for (String prefix : List.of("", "/v1")) {
                        // the same paths answer Google's clients in their own shape (GeminiRoutes.serves tells them apart)
                        cfg.routes.get(prefix + "/models", ctx -> {
                            if (GeminiRoutes.serves(ctx)) gemini.models(ctx);
                            else openai.models(ctx);
                        });
                        cfg.routes.get(prefix + "/models/{id}", ctx -> {
                            if (GeminiRoutes.serves(ctx)) gemini.model(ctx);
                            else openai.model(ctx);
                        });
                        cfg.routes.post(prefix + "/chat/completions", openai::chatCompletions);
                        cfg.routes.post(prefix + "/embeddings", openai::embeddings);
                    }
                    for (String prefix : List.of("", "/v1")) {
                        cfg.routes.post(prefix + "/responses", responses::create);
                        cfg.routes.get(prefix + "/responses", responses::upgrade);
                        cfg.routes.get(prefix + "/responses/{id}", state::get);
                        cfg.routes.get(prefix + "/responses/{id}/input_items", state::inputItems);
                        cfg.routes.delete(prefix + "/responses/{id}", state::delete);
                        cfg.routes.post(prefix + "/messages", anthropic::messages);
                        cfg.routes.post(prefix + "/messages/count_tokens", anthropic::countTokens);
                    }
                    cfg.routes.get("/v1beta/models", gemini::models);
                    cfg.routes.get("/v1beta/models/{id}", gemini::model);
                    // Javalin matches a parameter followed by a literal within one segment (GeminiTests.JavalinColonTests)
                    for (String prefix : GeminiRoutes.PREFIXES) {
                        cfg.routes.post(prefix + "/models/{model}:generateContent", gemini::generateContent);
                        cfg.routes.post(prefix + "/models/{model}:streamGenerateContent", gemini::streamGenerateContent);
                        cfg.routes.post(prefix + "/models/{model}:countTokens", gemini::countTokens);
                    }
                    cfg.routes.get("/usage", ctx -> openai.usage(ctx, from -> store.creditsSince(from.toEpochMilli())
                        .orElseGet(() -> controls.stats().credits().since(from))));
                    cfg.routes.get("/token", openai::token);
                    cfg.routes.exception(Exception.class, Errors::handle);
                    cfg.routes.error(404, ctx -> {
                        if (ctx.attribute(Errors.WRITTEN) == null) Errors.write(ctx, new ApiError(404, "not_found_error",
                            "No route for " + ctx.method() + " " + ctx.path()));
                    });
                });
                try {
                    app.start();
                } catch (RuntimeException e) {
                    store.close();
                    throw e;
                }
                // only now: opening SQLite (its native library first) while Jetty started slowed both, on two cores
                store.beginOpening();
                return new Server(app, options.host(), inFlight, copilot.streams(), store);
            }

            /**
             * Javalin gives every request with Sec-WebSocket-Version to its WebSocket servlet, which has no routes here and
             * answers an HTML 404 past every check. Without that header an upgrade takes the ordinary way: the browser guard,
             * the API key, then the route (GET /v1/responses answers 426).
             */
            public static final class WebSocketAsHttp implements jakarta.servlet.Filter {
                static final String VERSION = "Sec-WebSocket-Version";

                @Override
                public void doFilter(jakarta.servlet.ServletRequest req, jakarta.servlet.ServletResponse res, jakarta.servlet.FilterChain chain)
                        throws IOException, jakarta.servlet.ServletException {
                    if (!(req instanceof jakarta.servlet.http.HttpServletRequest http) || http.getHeader(VERSION) == null) {
                        chain.doFilter(req, res);
                        return;
                    }
                    chain.doFilter(new jakarta.servlet.http.HttpServletRequestWrapper(http) {
                        @Override
                        public String getHeader(String name) {
                            return VERSION.equalsIgnoreCase(name) ? null : super.getHeader(name);
                        }

                        @Override
                        public java.util.Enumeration<String> getHeaders(String name) {
                            return VERSION.equalsIgnoreCase(name) ? java.util.Collections.emptyEnumeration() : super.getHeaders(name);
                        }

                        @Override
                        public java.util.Enumeration<String> getHeaderNames() {
                            List<String> names = new ArrayList<>(java.util.Collections.list(super.getHeaderNames()));
                            names.removeIf(VERSION::equalsIgnoreCase);
                            return java.util.Collections.enumeration(names);
                        }
                    }, res);
                }
            }

            static final String JETTY_REFERENCES_PER_CACHE_LINE = "org.eclipse.jetty.util.referencesPerCacheLine";

            /**
             * Jetty pads some arrays by the references that fit in a cache line, and asks JMX whether oops are compressed
             * to count them unless this property says it: starting JMX for that one answer cost 0.1 s of every start.
             * Below 32 GB of heap HotSpot compresses them (4-byte references); a wrong guess only changes the padding.
             */
            static void tellJettyTheCacheLine() {
                if (System.getProperty(JETTY_REFERENCES_PER_CACHE_LINE) != null) return;
                int lineBytes = Integer.getInteger("org.eclipse.jetty.util.cacheLineBytes", 64);
                int referenceBytes = Runtime.getRuntime().maxMemory() < (32L << 30) ? 4 : 8;
                System.setProperty(JETTY_REFERENCES_PER_CACHE_LINE, String.valueOf(Math.max(1, lineBytes / referenceBytes)));
            }

            /** Jetty evicts one idle thread per idle timeout by default: 100 threads of a burst took over an hour to go. */
            private static org.eclipse.jetty.util.thread.QueuedThreadPool platformPool() {
                var pool = new org.eclipse.jetty.util.thread.QueuedThreadPool(MAX_PLATFORM_THREADS, MIN_PLATFORM_THREADS, (int) POOL_IDLE.toMillis());
                pool.setMaxEvictCount(MAX_PLATFORM_THREADS);
                return pool;
            }

            int port() {
                return app.port();
            }

            String baseUrl() {
                String h = host.contains(":") ? "[" + host + "]" : host;
                if (h.equals("0.0.0.0") || h.equals("[::]")) h = "localhost";
                return "http://" + h + ":" + port();
            }

            void stop() {
                app.stop();
                store.close();
                stopped.countDown();
            }

            int running() {
                return inFlight.get();
            }

            /**
             * Closes the listening sockets (new connections are refused at once, not queued), then waits up to the
             * timeout for running requests (streams) to finish.
             */
            void drain(Duration timeout) {
                for (var connector : app.jettyServer().server().getConnectors()) {
                    if (connector instanceof org.eclipse.jetty.server.AbstractNetworkConnector c) c.close();
                }
                awaitIdle(timeout);
            }

            /** Ends the streams still running with their API's error event and waits briefly for them to be written. */
            int endStreams(Duration timeout) {
                int ended = streams.endAll();
                awaitIdle(timeout);
                return ended;
            }

            private void awaitIdle(Duration timeout) {
                long end = System.nanoTime() + timeout.toNanos();
                while (inFlight.get() > 0 && System.nanoTime() < end) {
                    try {
                        Thread.sleep(50);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        return;
                    }
                }
            }

            /** Blocks until stop(); Jetty's own join returns at once when its pool runs virtual threads. */
            void join() throws InterruptedException {
                stopped.await();
            }
        }

        /** What one request did, filled in by its handler, read by the request log and /stats. */
        static final class Exchange {
            static final String KEY = "copilot-api.exchange";

            volatile String requestedModel;
            volatile String upstreamModel;
            volatile String route;
            volatile String note;
            volatile boolean invokesModel;
            volatile boolean failedInStream;
            volatile long inputTokens = -1;
            volatile long outputTokens = -1;
            /** The error the client was given, and whether the operator should hear of it (Copilot's or ours, not the client's). */
            volatile String error;
            volatile boolean warn;
            /** What the upstream call cost in premium requests; null when no model was called or the call was released. */
            volatile Billing.Charge charge;
            /** Copilot answered the call (a JSON answer, or a stream opened): from then on its charge stands. */
            volatile boolean answered;
            /** For the request history: when the request came and its first byte left, cached input tokens, the error's type. */
            volatile long startedNanos;
            volatile long firstByteNanos;
            volatile long cachedTokens = -1;
            volatile String errorType;
            /** The request body as the client sent it: spliced into the native upstream body, kept in the history with --history-bodies. */
            volatile byte[] requestBody;
            /** A JSON answer's text, for the history with --history-bodies. */
            volatile String responseBody;
            /** copilot_usage.total_nano_aiu as Copilot reported it; -1 when it did not. */
            volatile long nanoAiu = -1;
            /** What the request cost in AI Credits once settled; empty for a failed call or a legacy plan. */
            volatile Optional<Cost.Figure> cost;
            /** The kind of background call this was (warmup, title, compaction, side call); null for a person's prompt and its turns. */
            volatile String background;

            static Exchange of(Context ctx) {
                Exchange e = ctx.attribute(KEY);
                if (e == null) {
                    e = new Exchange();
                    ctx.attribute(KEY, e);
                }
                return e;
            }

            Exchange model(String requested, String upstream) {
                requestedModel = requested;
                upstreamModel = upstream;
                return this;
            }

            Exchange route(String r) {
                route = r;
                return this;
            }

            Exchange note(String n) {
                note = n;
                return this;
            }

            Exchange error(String message, boolean worthAWarning) {
                error = message;
                warn = worthAWarning;
                return this;
            }

            /** A stream that ended in an error event: a 200 on the wire, a failure all the same. */
            Exchange failed(String n) {
                failedInStream = true;
                return note(n);
            }

            /** Records usage; negative values mean unknown and are ignored. */
            Exchange usage(long in, long out) {
                if (in >= 0) inputTokens = in;
                if (out >= 0) outputTokens = out;
                return this;
            }

            Exchange firstByte() {
                if (firstByteNanos == 0) firstByteNanos = System.nanoTime();
                return this;
            }

            Exchange cached(long tokens) {
                if (tokens >= 0) cachedTokens = tokens;
                return this;
            }

            /** Copilot's own figure for the call (copilot_usage), where an answer or stream event carries it. */
            Exchange copilotUsage(JsonNode holder) {
                long nano = Cost.reportedNano(holder);
                if (nano >= 0) nanoAiu = nano;
                return this;
            }

            /** Responses usage: input tokens (cached included) and output tokens. */
            Exchange responsesUsage(JsonNode usage) {
                if (usage == null || !usage.isObject()) return this;
                copilotUsage(usage);
                cached(usage.path("input_tokens_details").path("cached_tokens").asLong(-1));
                return usage(usage.path("input_tokens").asLong(-1), usage.path("output_tokens").asLong(-1));
            }

            /** Chat-completions usage: prompt tokens (cached included) and completion tokens. */
            Exchange chatUsage(JsonNode usage) {
                if (usage == null || !usage.isObject()) return this;
                copilotUsage(usage);
                cached(usage.path("prompt_tokens_details").path("cached_tokens").asLong(-1));
                return usage(usage.path("prompt_tokens").asLong(-1), usage.path("completion_tokens").asLong(-1));
            }

            /** Anthropic usage: input excludes cached tokens there, so they are added back. */
            Exchange anthropicUsage(JsonNode usage) {
                if (usage == null || !usage.isObject()) return this;
                copilotUsage(usage);
                cached(usage.path("cache_read_input_tokens").asLong(-1));
                long in = usage.has("input_tokens") ? usage.path("input_tokens").asLong() + usage.path("cache_read_input_tokens").asLong(0)
                    + usage.path("cache_creation_input_tokens").asLong(0) : -1;
                return usage(in, usage.path("output_tokens").asLong(-1));
            }
        }

        /**
         * One line per request: method, path, requested model -> upstream model, route, status, duration and
         * tokens; bodies only with --verbose (logged by the handlers, secrets redacted).
         */
        static final class RequestLog {
            static void write(Context ctx, Float ms, Stats stats) {
                Exchange e = Exchange.of(ctx);
                int status = ctx.res().getStatus();
                long millis = Math.round(ms);
                stats.record(e, status, millis);
                StringBuilder line = new StringBuilder().append(ctx.method()).append(' ').append(ctx.path());
                if (e.requestedModel != null) {
                    line.append(' ').append(e.requestedModel);
                    if (e.upstreamModel != null && !e.upstreamModel.equals(e.requestedModel)) line.append(" -> ").append(e.upstreamModel);
                }
                if (e.route != null || e.background != null) {
                    line.append(" [");
                    if (e.route != null) line.append(e.route).append(e.background == null ? "" : ", ");
                    if (e.background != null) line.append("background: ").append(e.background);
                    line.append(']');
                }
                line.append(' ').append(status).append(' ').append(millis).append("ms");
                if (e.inputTokens >= 0 || e.outputTokens >= 0) {
                    line.append(" in=").append(Math.max(0, e.inputTokens)).append(" out=").append(Math.max(0, e.outputTokens));
                    if (e.cachedTokens >= 0) line.append(" cached=").append(e.cachedTokens);
                }
                Optional<Cost.Figure> cost = e.cost;
                if (cost != null && cost.isPresent()) line.append(' ').append(cost.get().describe());
                else if (e.charge != null) line.append(' ').append(e.charge.describe());
                if (e.note != null) line.append(" (").append(e.note).append(')');
                if (e.error != null) line.append(": ").append(Redact.shorten(e.error));
                if (e.warn) Logs.log().warn("{}", line);
                else if (e.invokesModel || status >= 500 || e.note != null) Logs.log().info("{}", line);
                else Logs.log().debug("{}", line);
            }
        }

        /**
         * What a web page must not reach. DNS rebinding leaves one trace, the Host header, so only the names the
         * server was bound for are served; a browser marks cross-site requests with Origin and Sec-Fetch-Site, so
         * those are refused unless --cors-origin allows the origin, and then preflights are answered for it.
         */
        static final class BrowserGuard {
            static final String ALLOW_HEADERS = "authorization, content-type, x-api-key, x-goog-api-key, x-goog-api-client, anthropic-version, anthropic-beta, "
                + "anthropic-dangerous-direct-browser-access, openai-organization, openai-project, x-stainless-arch, x-stainless-lang, "
                + "x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
                + "x-stainless-runtime-version, x-stainless-timeout, x-stainless-helper-method";
            private static final Pattern IPV4 = Pattern.compile("\\d{1,3}(\\.\\d{1,3}){3}");

            private final Set<String> hosts;
            private final Set<String> origins;

            BrowserGuard(Set<String> hosts, Set<String> origins) {
                this.hosts = Set.copyOf(hosts);
                this.origins = Set.copyOf(origins);
            }

            /** localhost and the loopback literals, the bound address, --allowed-host names; --cors-origin origins. */
            static BrowserGuard from(String bindHost, List<String> allowedHosts, List<String> corsOrigins, Map<String, String> env) {
                Set<String> hosts = new LinkedHashSet<>(List.of("localhost", "127.0.0.1", "[::1]"));
                hosts.add(hostName(bindHost.contains(":") && !bindHost.startsWith("[") ? "[" + bindHost + "]" : bindHost));
                for (String h : Settings.listOption(env.get("COPILOT_API_ALLOWED_HOSTS"), allowedHosts)) hosts.add(hostName(h));
                Set<String> origins = new LinkedHashSet<>();
                for (String o : Settings.listOption(env.get("COPILOT_API_CORS_ORIGINS"), corsOrigins)) origins.add(origin(o));
                return new BrowserGuard(hosts, origins);
            }

            static BrowserGuard loopback(String bindHost) {
                return from(bindHost, List.of(), List.of(), Map.of());
            }

            boolean allowsAnyOrigin() {
                return origins.contains("*");
            }

            /** The host part of a Host header or a name, lower case, without port, brackets kept for IPv6. */
            static String hostName(String hostHeader) {
                String h = hostHeader.trim().toLowerCase(Locale.ROOT);
                if (h.startsWith("[")) {
                    int end = h.indexOf(']');
                    return end < 0 ? h : h.substring(0, end + 1);
                }
                int colon = h.indexOf(':');
                if (colon >= 0) h = h.substring(0, colon);
                return h.endsWith(".") ? h.substring(0, h.length() - 1) : h;
            }

            static String origin(String o) {
                String v = o.trim().toLowerCase(Locale.ROOT);
                if (v.equals("*")) return v;
                if (!v.startsWith("http://") && !v.startsWith("https://")) {
                    throw new UserFacingException("--cors-origin takes an origin such as http://localhost:3000, got '" + o + "'");
                }
                return Settings.trimSlash(v);
            }

            /**
             * An IP literal cannot be a rebinding: a page whose address is ours was served by us. Names are the
             * rebinding vector, so only the known ones pass.
             */
            boolean allowsHost(String hostHeader) {
                if (hostHeader == null || hostHeader.isBlank()) return true;
                String h = hostName(hostHeader);
                return hosts.contains(h) || IPV4.matcher(h).matches() || (h.startsWith("[") && h.endsWith("]"));
            }

            /** Runs before every route: refuses foreign hosts and cross-site requests, answers allowed preflights. */
            void check(Context ctx) {
                String host = ctx.header("host");
                if (!allowsHost(host)) {
                    throw new ApiError(403, "permission_error", "copilot-api does not serve the host '" + hostName(host)
                        + "' (a web page may be trying DNS rebinding); if you reach this server by that name, start it with --allowed-host "
                        + hostName(host), null, "host_not_allowed");
                }
                String origin = ctx.header("origin");
                if (origin != null && !isOwnOrigin(origin, host)) {
                    String o = origin.trim().toLowerCase(Locale.ROOT);
                    if (!origins.contains(o) && !allowsAnyOrigin()) {
                        throw new ApiError(403, "permission_error", "copilot-api refuses requests from the web origin " + origin
                            + "; to let that page use this server, start it with --cors-origin " + origin, null, "origin_not_allowed");
                    }
                    allowCors(ctx, origin);
                    if (isPreflight(ctx)) {
                        answerPreflight(ctx);
                        return;
                    }
                } else if (origin == null && crossSite(ctx) && !isNavigationToPage(ctx)) {
                    throw new ApiError(403, "permission_error", "copilot-api refuses cross-site requests from web pages", null,
                        "origin_not_allowed");
                }
            }

            private static boolean isOwnOrigin(String origin, String host) {
                if (host == null) return false;
                String o = origin.trim().toLowerCase(Locale.ROOT);
                String h = host.trim().toLowerCase(Locale.ROOT);
                return o.equals("http://" + h) || o.equals("https://" + h);
            }

            private static boolean crossSite(Context ctx) {
                String site = Optional.ofNullable(ctx.header("sec-fetch-site")).orElse("").trim().toLowerCase(Locale.ROOT);
                return site.equals("cross-site") || site.equals("same-site");
            }

            /** A link to the dashboard from another page only opens it; the page itself reads nothing cross-site. */
            private static boolean isNavigationToPage(Context ctx) {
                return Dashboard.isPage(ctx) && "navigate".equalsIgnoreCase(ctx.header("sec-fetch-mode"));
            }

            private static boolean isPreflight(Context ctx) {
                return ctx.method() == io.javalin.http.HandlerType.OPTIONS && ctx.header("access-control-request-method") != null;
            }

            private static void allowCors(Context ctx, String origin) {
                ctx.header("Access-Control-Allow-Origin", origin);
                ctx.header("Vary", "Origin");
                ctx.header("Access-Control-Expose-Headers", "retry-after, x-request-id, request-id");
            }

            private static void answerPreflight(Context ctx) {
                ctx.header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
                String asked = ctx.header("access-control-request-headers");
                ctx.header("Access-Control-Allow-Headers", asked != null && !asked.isBlank() ? asked : ALLOW_HEADERS);
                ctx.header("Access-Control-Max-Age", "600");
                if ("true".equalsIgnoreCase(ctx.header("access-control-request-private-network"))) {
                    ctx.header("Access-Control-Allow-Private-Network", "true");
                }
                ctx.status(204);
                ctx.attribute(PREFLIGHT, true);
                ctx.skipRemainingHandlers();
            }

            static final String PREFLIGHT = "copilot-api.preflight";
        }

        /** Reading and checking request bodies; every failure here is a 400 before any upstream call. */
        static final class Requests {
            /** Every POST route takes JSON: a form or text/plain body is what a web page can send without asking. */
            static void checkBody(Context ctx) {
                if (ctx.method() != io.javalin.http.HandlerType.POST) return;
                String type = Optional.ofNullable(ctx.header("content-type")).orElse("");
                String media = type.split(";", 2)[0].trim().toLowerCase(Locale.ROOT);
                if (!media.equals("application/json")) {
                    throw new ApiError(415, "invalid_request_error", "The request body must be JSON sent with Content-Type: application/json"
                        + (media.isEmpty() ? "" : ", not " + media), null, "unsupported_media_type");
                }
                long length = ctx.req().getContentLengthLong();
                if (length > Server.MAX_REQUEST_BYTES) throw tooLarge();
            }

            static ApiError tooLarge() {
                return new ApiError(413, "invalid_request_error", "The request body is larger than copilot-api accepts ("
                    + Server.MAX_REQUEST_BYTES / (1024 * 1024) + " MB)", null, "request_too_large");
            }

            /** The body, read up to the limit whatever Content-Length said (a chunked body has none). */
            static byte[] body(Context ctx) {
                try (InputStream in = ctx.req().getInputStream()) {
                    byte[] raw = in.readNBytes((int) Server.MAX_REQUEST_BYTES + 1);
                    if (raw.length > Server.MAX_REQUEST_BYTES) throw tooLarge();
                    return raw;
                } catch (IOException e) {
                    throw new ApiError(400, "invalid_request_error", "The request body could not be read: " + describe(e));
                }
            }

            /** The request body as the client sent it (after jsonObject read it), for splicing into the upstream body. */
            static byte[] raw(Context ctx) {
                return Exchange.of(ctx).requestBody;
            }

            static ObjectNode jsonObject(Context ctx) {
                byte[] raw = body(ctx);
                Exchange.of(ctx).requestBody = raw;
                if (raw.length == 0) throw new ApiError(400, "invalid_request_error", "The request body is empty; expected a JSON object");
                JsonNode node;
                try {
                    node = JSON.readTree(raw);
                } catch (IOException e) {
                    throw new ApiError(400, "invalid_request_error", "The request body is not valid JSON: " + Json.shortError(e));
                }
                if (node == null || !node.isObject()) throw new ApiError(400, "invalid_request_error", "The request body must be a JSON object");
                return (ObjectNode) node;
            }

            static String requireText(JsonNode body, String field) {
                JsonNode v = body.get(field);
                if (v == null || v.isNull()) throw new ApiError(400, "invalid_request_error", "Missing required parameter: '" + field + "'", field, null);
                if (!v.isTextual() || v.asText().isBlank()) {
                    throw new ApiError(400, "invalid_request_error", "'" + field + "' must be a non-empty string", field, null);
                }
                return v.asText();
            }

            static JsonNode requireArray(JsonNode body, String field) {
                JsonNode v = body.get(field);
                if (v == null || v.isNull()) throw new ApiError(400, "invalid_request_error", "Missing required parameter: '" + field + "'", field, null);
                if (!v.isArray() || v.isEmpty()) throw new ApiError(400, "invalid_request_error", "'" + field + "' must be a non-empty array", field, null);
                return v;
            }

            static ApiError invalid(String field, String message) {
                return new ApiError(400, "invalid_request_error", "'" + field + "' " + message, field, null);
            }

            /** The stream flag, which decides how the answer is read: true or false (or absent), never "yes". */
            static boolean stream(JsonNode body) {
                JsonNode v = body.get("stream");
                if (v == null || v.isNull()) return false;
                if (!v.isBoolean()) throw invalid("stream", "must be a boolean, true or false, got " + Redact.shorten(v.toString()));
                return v.asBoolean();
            }

            static void optionalArray(JsonNode body, String field) {
                JsonNode v = body.get(field);
                if (v != null && !v.isNull() && !v.isArray()) throw invalid(field, "must be an array");
            }

            static void optionalObject(JsonNode body, String field) {
                JsonNode v = body.get(field);
                if (v != null && !v.isNull() && !v.isObject()) throw invalid(field, "must be an object");
            }

            static void optionalText(JsonNode body, String field) {
                JsonNode v = body.get(field);
                if (v != null && !v.isNull() && !v.isTextual()) throw invalid(field, "must be a string");
            }

            static void optionalPositiveInt(JsonNode body, String field) {
                JsonNode v = body.get(field);
                if (v != null && !v.isNull() && (!v.isIntegralNumber() || !v.canConvertToInt() || v.asInt() < 1)) {
                    throw invalid(field, "must be a positive integer");
                }
            }

            /** Each entry an object with a string role, content of the given kinds; the path names the entry. */
            static void messages(JsonNode messages, String field, boolean nullContent) {
                for (int i = 0; i < messages.size(); i++) {
                    JsonNode m = messages.get(i);
                    String at = field + "[" + i + "]";
                    if (!m.isObject()) throw invalid(at, "must be an object");
                    JsonNode role = m.get("role");
                    if (role == null || !role.isTextual()) throw invalid(at + ".role", "must be a string");
                    JsonNode content = m.get("content");
                    boolean absent = content == null || content.isNull();
                    if (absent && nullContent) continue;
                    if (absent) throw invalid(at + ".content", "is required");
                    if (!content.isTextual() && !content.isArray()) throw invalid(at + ".content", "must be a string or an array of content parts");
                    if (content.isArray()) parts(content, at + ".content");
                }
            }

            static void parts(JsonNode parts, String field) {
                for (int j = 0; j < parts.size(); j++) {
                    JsonNode part = parts.get(j);
                    if (!part.isObject() || !part.path("type").isTextual()) throw invalid(field + "[" + j + "]", "must be an object with a string type");
                }
            }

            static void tools(JsonNode body) {
                optionalArray(body, "tools");
                JsonNode tools = body.path("tools");
                for (int i = 0; i < tools.size(); i++) if (!tools.get(i).isObject()) throw invalid("tools[" + i + "]", "must be an object");
            }

            /** The chat-completions fields copilot-api reads or rewrites. */
            static void chat(JsonNode body) {
                messages(body.get("messages"), "messages", true);
                stream(body);
                tools(body);
                optionalObject(body, "stream_options");
                optionalPositiveInt(body, "n");
                optionalPositiveInt(body, "max_tokens");
                optionalPositiveInt(body, "max_completion_tokens");
                optionalText(body, "reasoning_effort");
            }

            /** The Anthropic Messages fields copilot-api reads or rewrites (count_tokens reads the same ones). */
            static void anthropic(JsonNode body) {
                messages(body.get("messages"), "messages", false);
                stream(body);
                tools(body);
                JsonNode system = body.get("system");
                if (system != null && !system.isNull() && !system.isTextual() && !system.isArray()) {
                    throw invalid("system", "must be a string or an array of text blocks");
                }
                if (system != null && system.isArray()) parts(system, "system");
                optionalObject(body, "thinking");
                optionalObject(body, "tool_choice");
                optionalObject(body, "metadata");
                optionalObject(body, "output_config");
            }

            /** The Responses fields copilot-api reads or rewrites. */
            static void responses(JsonNode body) {
                stream(body);
                tools(body);
                optionalText(body, "instructions");
                optionalPositiveInt(body, "max_output_tokens");
                optionalObject(body, "reasoning");
                optionalObject(body, "text");
                optionalArray(body, "include");
                JsonNode input = body.path("input");
                for (int i = 0; i < input.size() && input.isArray(); i++) {
                    if (!input.get(i).isObject()) throw invalid("input[" + i + "]", "must be an object (an input item)");
                }
            }

            static void writeJson(Context ctx, JsonNode node) {
                String text = Json.write(node);
                Exchange.of(ctx).firstByte().responseBody = text;
                ctx.contentType("application/json").result(text);
            }

            /** A whole-number query parameter within bounds (one too long for a long is out of them too). */
            static long queryLong(Context ctx, String name, long min, long max) {
                String v = ctx.queryParam(name);
                try {
                    long n = Long.parseLong(v);
                    if (n >= min && n <= max) return n;
                } catch (NumberFormatException e) {
                    // answered below
                }
                throw invalid(name, "must be an integer from " + min + " to " + max);
            }

            /** An integer query parameter within bounds; absent is the default. */
            static int queryInt(Context ctx, String name, int fallback, int min, int max) {
                String v = ctx.queryParam(name);
                if (v == null) return fallback;
                try {
                    int n = Integer.parseInt(v);
                    if (n >= min && n <= max) return n;
                } catch (NumberFormatException e) {
                    // answered below
                }
                throw invalid(name, "must be an integer from " + min + " to " + max);
            }

            static void logBody(String what, JsonNode body) {
                if (Logs.log().isDebugEnabled()) Logs.log().debug("{}: {}", what, Redact.secrets(Json.write(body)));
            }
        }
    }

    // ==== 3.2 Operator controls: keys, pacing, approval, stats, premium billing, the cost in AI Credits, dashboard ====

    /** What the person running the server controls and sees: keys, pacing, approval, budgets and what was spent. */
    static final class Operator {
        private Operator() {}

        /** The operator's controls over model-invoking requests: API keys, pacing, manual approval, statistics. */
        record Controls(ApiKeys keys, Pacer pacer, Approver approver, Stats stats, Billing billing) {
            Controls(ApiKeys keys, Pacer pacer, Approver approver, Stats stats) {
                this(keys, pacer, approver, stats, Billing.unlimited());
            }

            static Controls none() {
                return new Controls(ApiKeys.NONE, Pacer.NONE, Approver.NONE, new Stats());
            }

            /**
             * Before a request that invokes a model: the operator's yes at the terminal, then its turn in the pacing.
             * The client is watched all the while: one that leaves is dropped before Copilot hears of it, and counts
             * as no model call.
             */
            void admit(Context ctx, String model, int messages) {
                Exchange exchange = Exchange.of(ctx);
                stats.credits().admit(Instant.now());
                exchange.invokesModel = true;
                // watched as a non-stream: nothing is committed or kept alive while the request waits its turn
                Watch client = new ClientWatch(ctx, Duration.ZERO, Duration.ZERO);
                try {
                    if (approver.asks()) approver.approve(ctx.method() + " " + ctx.path(), model, messages, client);
                    pacer.admit(client);
                } catch (ClientLeft e) {
                    exchange.invokesModel = false;
                    throw e;
                }
            }
        }

        /**
         * --api-key / COPILOT_API_KEYS: every route but the dashboard page wants one, as x-api-key or a bearer token (Google's
         * clients: x-goog-api-key, or ?key= on Gemini paths).
         */
        static final class ApiKeys {
            static final ApiKeys NONE = new ApiKeys(List.of());
            private final List<byte[]> digests;

            ApiKeys(List<String> keys) {
                List<byte[]> d = new ArrayList<>();
                for (String k : keys) if (k != null && !k.isBlank()) d.add(sha256(k.trim()));
                this.digests = List.copyOf(d);
            }

            static ApiKeys from(List<String> options, Map<String, String> env) {
                return new ApiKeys(Settings.listOption(env.get("COPILOT_API_KEYS"), options));
            }

            boolean enabled() {
                return !digests.isEmpty();
            }

            /** Compares digests of equal length with MessageDigest.isEqual, against every key, so timing tells nothing. */
            boolean accepts(String presented) {
                if (presented == null) return false;
                byte[] candidate = sha256(presented);
                boolean ok = false;
                for (byte[] d : digests) ok |= java.security.MessageDigest.isEqual(d, candidate);
                return ok;
            }

            static String presented(Context ctx) {
                String key = ctx.header("x-api-key");
                if (key != null && !key.isBlank()) return key.trim();
                key = ctx.header("x-goog-api-key");
                // ?key= as Google's API takes it, on Google's paths only: a key in a URL is easier to leak than a header
                if ((key == null || key.isBlank()) && GeminiRoutes.serves(ctx)) key = ctx.queryParam("key");
                if (key != null && !key.isBlank()) return key.trim();
                String auth = ctx.header("authorization");
                if (auth != null && auth.regionMatches(true, 0, "Bearer ", 0, 7)) return auth.substring(7).trim();
                return null;
            }

            void check(Context ctx) {
                if (!enabled() || Dashboard.isPage(ctx) || Dashboard.isIcon(ctx)) return;
                if (!accepts(presented(ctx))) {
                    throw new ApiError(401, "authentication_error",
                        "Missing or invalid API key: send it as the x-api-key header or as Authorization: Bearer <key> (Gemini clients: "
                            + "x-goog-api-key)", null, "invalid_api_key");
                }
            }

            private static byte[] sha256(String s) {
                return Ids.sha256().digest(s.getBytes(UTF_8));
            }
        }

        /**
         * --rate-limit: at least this long between model-invoking requests. Each request takes the next free slot
         * under a fair lock, so they go first come, first served and never two in one slot; without --wait a
         * request whose slot is not now is refused with 429 and retry-after.
         */
        static final class Pacer {
            static final Pacer NONE = new Pacer(Duration.ZERO, false);
            static final String LEFT_QUEUED = "client disconnected while waiting its turn; never sent to Copilot";
            private final long intervalNanos;
            private final boolean wait;
            private final java.util.concurrent.locks.ReentrantLock lock = new java.util.concurrent.locks.ReentrantLock(true);
            private long nextFree;
            private boolean used;

            Pacer(Duration interval, boolean wait) {
                this.intervalNanos = interval.toNanos();
                this.wait = wait;
            }

            /**
             * Waits for this request's slot and returns it (System.nanoTime); without pacing, now. A client that
             * leaves while it waits gives its slot back (when no later request has queued behind it) and ClientLeft.
             */
            long admit(Watch client) {
                if (intervalNanos <= 0) return System.nanoTime();
                long slot;
                lock.lock();
                try {
                    long now = System.nanoTime();
                    slot = !used || nextFree - now <= 0 ? now : nextFree;
                    if (slot != now && !wait) {
                        long seconds = Math.max(1, (long) Math.ceil((slot - now) / 1e9));
                        ApiError e = new ApiError(429, "rate_limit_error", "copilot-api is rate limited to one request every "
                            + Duration.ofNanos(intervalNanos).toMillis() / 1000.0 + " s; retry in " + seconds + " s", null, "rate_limited");
                        e.headers().put("retry-after", String.valueOf(seconds));
                        throw e;
                    }
                    used = true;
                    nextFree = slot + intervalNanos;
                } finally {
                    lock.unlock();
                }
                try {
                    sleepUntil(slot, client);
                } catch (ClientLeft e) {
                    giveBack(slot);
                    throw e;
                }
                return slot;
            }

            private void giveBack(long slot) {
                lock.lock();
                try {
                    if (nextFree == slot + intervalNanos) nextFree = slot;
                } finally {
                    lock.unlock();
                }
            }

            private static void sleepUntil(long nanoTime, Watch client) {
                long start = System.nanoTime();
                try {
                    for (long left = nanoTime - start; left > 0; left = nanoTime - System.nanoTime()) {
                        TimeUnit.NANOSECONDS.sleep(Math.min(left, CopilotClient.POLL.toNanos()));
                        if (!client.waiting(Duration.ofNanos(System.nanoTime() - start), false)) throw new ClientLeft(LEFT_QUEUED);
                    }
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new ApiError(503, "api_error", "interrupted while waiting for the rate limit");
                }
            }
        }

        /** --manual: the operator answers y/n at the terminal for each model-invoking request; one question at a time. */
        static final class Approver {
            static final Approver NONE = new Approver(null, Duration.ZERO);

            static final String LEFT_UNANSWERED = "client disconnected while waiting for approval; never sent to Copilot";

            /**
             * Where questions go and answers come from: the real terminal, or a script in tests. The one reader of the
             * process's input: the Claude Code model prompt and the --manual questions both ask through it.
             */
            interface Terminal {
                /** Shows the question. Lines typed before it are discarded, so a stray answer never approves a later request. */
                void ask(String question);

                /** The next line typed since the question, or null when none came within the timeout; at the end of input, "" at once. */
                String answer(Duration timeout) throws InterruptedException;

                /** Tells the operator something that needs no answer. */
                default void tell(String note) {
                }
            }

            private final Terminal terminal;
            private final Duration timeout;
            private final java.util.concurrent.locks.ReentrantLock lock = new java.util.concurrent.locks.ReentrantLock(true);

            Approver(Terminal terminal, Duration timeout) {
                this.terminal = terminal;
                this.timeout = timeout;
            }

            /** Whether requests wait for the operator's answer at all (--manual). */
            boolean asks() {
                return terminal != null;
            }

            /** Asks, one question at a time, until the operator answers, the timeout passes or the client leaves (ClientLeft). */
            void approve(String request, String model, int messages, Watch client) {
                if (terminal == null) return;
                long start = System.nanoTime();
                long deadline = start + timeout.toNanos();
                try {
                    if (!takeTurn(deadline, start, client)) throw refused("no answer at the terminal within " + minutes());
                    try {
                        terminal.ask(String.format(Locale.ROOT, "%nAllow %s model=%s messages=%d? [y/N] ", request, model, messages));
                        String answer = answer(deadline, start, client, request);
                        if (answer == null) throw refused("no answer at the terminal within " + minutes());
                        if (!answer.trim().toLowerCase(Locale.ROOT).matches("y|yes")) throw refused("refused at the terminal");
                    } finally {
                        lock.unlock();
                    }
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw refused("interrupted while waiting for approval");
                }
            }

            /** The question lock, waited for in slices so that a client leaving the queue is noticed. */
            private boolean takeTurn(long deadline, long start, Watch client) throws InterruptedException {
                while (!lock.tryLock(Math.min(CopilotClient.POLL.toNanos(), deadline - System.nanoTime()), TimeUnit.NANOSECONDS)) {
                    if (System.nanoTime() - deadline >= 0) return false;
                    if (!client.waiting(Duration.ofNanos(System.nanoTime() - start), false)) throw new ClientLeft(LEFT_UNANSWERED);
                }
                return true;
            }

            private String answer(long deadline, long start, Watch client, String request) throws InterruptedException {
                for (long left = deadline - System.nanoTime(); left > 0; left = deadline - System.nanoTime()) {
                    String line = terminal.answer(Duration.ofNanos(Math.min(left, CopilotClient.POLL.toNanos())));
                    if (line != null) return line;
                    if (!client.waiting(Duration.ofNanos(System.nanoTime() - start), false)) {
                        terminal.tell(String.format(Locale.ROOT, "(the client of %s left; not sent)%n", request));
                        throw new ClientLeft(LEFT_UNANSWERED);
                    }
                }
                return null;
            }

            private String minutes() {
                long s = timeout.toSeconds();
                return s % 60 == 0 ? s / 60 + " minutes" : s + " s";
            }

            private static ApiError refused(String why) {
                return new ApiError(403, "permission_error", "The request was not approved: " + why, null, "not_approved");
            }

            /**
             * The process's own terminal: a reader thread feeds typed lines into a queue. It reads through
             * console.reader(), not console.readLine(), which holds the console's write lock while it waits and
             * so would block every question printed from another thread.
             */
            static Terminal console(java.io.Console console) {
                java.util.concurrent.BlockingQueue<String> lines = new java.util.concurrent.LinkedBlockingQueue<>();
                java.util.concurrent.atomic.AtomicBoolean ended = new java.util.concurrent.atomic.AtomicBoolean();
                Thread reader = new Thread(() -> {
                    try (BufferedReader in = new BufferedReader(console.reader())) {
                        for (String line = in.readLine(); line != null; line = in.readLine()) lines.add(line);
                    } catch (IOException | RuntimeException e) {
                        Logs.log().warn("stopped reading the terminal: {}", describe(e));
                    } finally {
                        ended.set(true);
                        lines.add("");
                    }
                }, "terminal-input");
                reader.setDaemon(true);
                reader.start();
                return new Terminal() {
                    @Override
                    public void ask(String question) {
                        lines.clear();
                        console.printf("%s", question);
                        console.flush();
                    }

                    @Override
                    public String answer(Duration timeout) throws InterruptedException {
                        return ended.get() && lines.isEmpty() ? "" : lines.poll(timeout.toMillis(), TimeUnit.MILLISECONDS);
                    }

                    @Override
                    public void tell(String note) {
                        console.printf("%s", note);
                        console.flush();
                    }
                };
            }
        }

        /** Live request statistics for /stats and the dashboard: per model and in total, since start. */
        static final class Stats {
            static final int LATENCY_WINDOW = 1000;
            /** Requests for more distinct model names than this (typos, probes) are counted together. */
            static final int MAX_MODELS = 200;
            static final String OTHER = "(other models)";

            private final Instant since = Instant.now();
            private final Map<String, ModelStats> models = new java.util.concurrent.ConcurrentSkipListMap<>();
            /** Requests the browser guard turned away, by reason: a web page trying its luck shows here. */
            private final Map<String, java.util.concurrent.atomic.LongAdder> refused = new java.util.concurrent.ConcurrentSkipListMap<>();
            /** Premium units (in hundredths) by model, and model calls by billing reason (premium, continuation, ...). */
            private final Map<String, java.util.concurrent.atomic.LongAdder> premium = new java.util.concurrent.ConcurrentSkipListMap<>();
            private final Map<String, java.util.concurrent.atomic.LongAdder> reasons = new java.util.concurrent.ConcurrentSkipListMap<>();
            /** Background calls (warm-ups, titles, compactions, side calls) by kind, and the AI Credits they cost. */
            private final Map<String, java.util.concurrent.atomic.LongAdder> background = new java.util.concurrent.ConcurrentSkipListMap<>();
            private final java.util.concurrent.atomic.DoubleAdder backgroundCredits = new java.util.concurrent.atomic.DoubleAdder();
            /** AI Credits by model and day, and --budget. */
            private final Cost.Ledger credits;

            Stats() {
                this(null);
            }

            Stats(Cost.Budget budget) {
                credits = new Cost.Ledger(budget);
            }

            Cost.Ledger credits() {
                return credits;
            }

            static final class ModelStats {
                long requests;
                long errors;
                long inputTokens;
                long outputTokens;
                long cachedTokens;
                final java.util.ArrayDeque<Long> latencies = new java.util.ArrayDeque<>();

                synchronized void add(boolean error, long in, long out, long cached, long ms) {
                    requests++;
                    if (error) errors++;
                    inputTokens += Math.max(0, in);
                    outputTokens += Math.max(0, out);
                    cachedTokens += Math.max(0, cached);
                    if (latencies.size() == LATENCY_WINDOW) latencies.removeFirst();
                    latencies.addLast(ms);
                }

                synchronized ObjectNode json(String model) {
                    ObjectNode o = Json.object();
                    o.put("model", model);
                    o.put("requests", requests);
                    o.put("errors", errors);
                    o.put("input_tokens", inputTokens);
                    o.put("output_tokens", outputTokens);
                    o.put("cached_tokens", cachedTokens);
                    List<Long> sorted = new ArrayList<>(latencies);
                    java.util.Collections.sort(sorted);
                    o.put("median_latency_ms", sorted.isEmpty() ? 0 : sorted.get((sorted.size() - 1) / 2));
                    return o;
                }
            }

            void record(Exchange e, int status, long ms) {
                if (!e.invokesModel) return;
                String model = e.upstreamModel != null ? e.upstreamModel : e.requestedModel != null ? e.requestedModel : "(unknown)";
                if (!models.containsKey(model) && models.size() >= MAX_MODELS) model = OTHER;
                models.computeIfAbsent(model, m -> new ModelStats())
                    .add(status >= 400 || e.failedInStream, e.inputTokens, e.outputTokens, e.cachedTokens, ms);
                Optional<Cost.Figure> cost = e.cost;
                if (cost != null && cost.isPresent()) credits.add(model, e.route, cost.get(), Instant.now());
                if (e.background != null) {
                    background.computeIfAbsent(e.background, k -> new java.util.concurrent.atomic.LongAdder()).increment();
                    if (cost != null && cost.isPresent()) backgroundCredits.add(cost.get().credits());
                }
                Billing.Charge charge = e.charge;
                if (charge == null) return;
                reasons.computeIfAbsent(charge.reason().label, r -> new java.util.concurrent.atomic.LongAdder()).increment();
                if (charge.units() > 0) {
                    premium.computeIfAbsent(model, m -> new java.util.concurrent.atomic.LongAdder()).add(Math.round(charge.units() * 100));
                }
            }

            /** Premium requests spent since start: the total, by model, and how many calls each billing reason covered. */
            private ObjectNode premiumSnapshot() {
                ObjectNode o = Json.object();
                ObjectNode byModel = o.putObject("by_model");
                long total = 0;
                for (var entry : premium.entrySet()) {
                    total += entry.getValue().sum();
                    byModel.put(entry.getKey(), entry.getValue().sum() / 100.0);
                }
                o.put("units", total / 100.0);
                ObjectNode byReason = o.putObject("calls_by_reason");
                reasons.forEach((reason, n) -> byReason.put(reason, n.sum()));
                return o;
            }

            /** Background calls since start: how many, of which kinds, and the AI Credits they cost (0 on a legacy plan). */
            private ObjectNode backgroundSnapshot() {
                ObjectNode o = Json.object();
                ObjectNode byKind = Json.object();
                long calls = 0;
                for (var entry : background.entrySet()) {
                    calls += entry.getValue().sum();
                    byKind.put(entry.getKey(), entry.getValue().sum());
                }
                o.put("calls", calls);
                o.put("credits", backgroundCredits.sum());
                o.set("by_kind", byKind);
                return o;
            }

            void refused(String reason) {
                refused.computeIfAbsent(reason, r -> new java.util.concurrent.atomic.LongAdder()).increment();
            }

            ObjectNode snapshot() {
                ObjectNode o = Json.object();
                o.put("since", since.toString());
                ObjectNode turnedAway = o.putObject("refused");
                refused.forEach((reason, n) -> turnedAway.put(reason, n.sum()));
                o.put("uptime_seconds", Duration.between(since, Instant.now()).toSeconds());
                ArrayNode list = o.putArray("models");
                long requests = 0, errors = 0, in = 0, out = 0, cached = 0;
                for (var entry : models.entrySet()) {
                    ObjectNode m = entry.getValue().json(entry.getKey());
                    list.add(m);
                    requests += m.path("requests").asLong();
                    errors += m.path("errors").asLong();
                    in += m.path("input_tokens").asLong();
                    out += m.path("output_tokens").asLong();
                    cached += m.path("cached_tokens").asLong();
                }
                ObjectNode totals = o.putObject("totals");
                totals.put("requests", requests);
                totals.put("errors", errors);
                totals.put("input_tokens", in);
                totals.put("output_tokens", out);
                totals.put("cached_tokens", cached);
                o.set("premium", premiumSnapshot());
                o.set("credits", credits.json(Instant.now()));
                o.set("background", backgroundSnapshot());
                return o;
            }
        }

        /**
         * Premium requests. Copilot bills the model's multiplier for each call sent with X-Initiator: user and
         * nothing for agent; this decides which a call is (a person's prompt, or a continuation, a subagent's
         * first call, a background call), counts what was spent since start, and holds the --premium-budget. It also
         * chooses the cheap model background calls go to ({@link #cheapModel}), on any plan and from any route.
         */
        static final class Billing {
            enum Reason {
                PREMIUM("premium"), CONTINUATION("continuation"), SUBAGENT("subagent"), WARMUP("warmup"), TITLE("title"),
                COMPACTION("compaction"), SIDE_CALL("side call"), FREE_MODEL("free model");

                final String label;

                Reason(String label) {
                    this.label = label;
                }
            }

            /** What one upstream call costs: the initiator sent, why, and the model's multiplier. */
            record Charge(Initiator initiator, Reason reason, double multiplier, boolean textLast) {
                Charge(Initiator initiator, Reason reason, double multiplier) {
                    this(initiator, reason, multiplier, false);
                }

                double units() {
                    return initiator == Initiator.USER ? multiplier : 0;
                }

                /** For the request log: "premium 1×3", "free: continuation", or a free kind of call that Copilot made bill. */
                String describe() {
                    if (reason == Reason.PREMIUM) return "premium 1×" + Billing.format(multiplier);
                    if (initiator == Initiator.AGENT || reason == Reason.FREE_MODEL) return "free: " + reason.label;
                    return (units() > 0 ? "premium 1×" + Billing.format(multiplier) + ": " : "free: ") + reason.label
                        + " sent as user, Copilot refuses agent there";
                }
            }

            /**
             * Where Copilot refuses X-Initiator agent (400 "invalid initiator" since mid-2026: the last message is a user's
             * text, as Copilot sees it, whether a person or the editor wrote it): never tried on chat completions and
             * Responses; on /v1/messages the model and endpoint where Copilot refused it, so that the next such call (a
             * subagent's first call, a warm-up, a notification made of reminders) goes as user without the refused round trip.
             */
            static final class InitiatorRule {
                static final String REFUSAL = "invalid initiator";
                static final int MAX_REMEMBERED = 512;

                private final Set<String> refused = java.util.concurrent.ConcurrentHashMap.newKeySet();

                /** Chat completions and Responses refuse agent after a user's text; /v1/messages is learned. */
                boolean refuses(String model, String endpoint, Charge charge) {
                    if (!charge.textLast()) return false;
                    return !endpoint.equals(AnthropicRoutes.MESSAGES) || refused.contains(model + " " + endpoint);
                }

                /** Remembers a refusal of a user's text as agent; a refusal of anything else is answered but not remembered. */
                void learn(String model, String endpoint, Charge charge) {
                    if (!charge.textLast()) return;
                    if (refused.size() >= MAX_REMEMBERED) refused.clear();
                    refused.add(model + " " + endpoint);
                }

                static boolean isRefusal(UpstreamException e) {
                    return e.status() == 400 && e.body().toLowerCase(Locale.ROOT).contains(REFUSAL);
                }
            }

            private final Double budget;
            private final String smallModel;
            private final SubagentPrompts subagents = new SubagentPrompts(SubagentPrompts.MAX_PROMPTS, SubagentPrompts.MAX_AGE);
            private final InitiatorRule initiators = new InitiatorRule();
            /** Units spent since start, in hundredths (multipliers such as 0.33 add up exactly). */
            private final java.util.concurrent.atomic.AtomicLong spentHundredths = new java.util.concurrent.atomic.AtomicLong();

            Billing(Double budget, String smallModel) {
                this.budget = budget;
                this.smallModel = smallModel;
            }

            static Billing unlimited() {
                return new Billing(null, null);
            }

            SubagentPrompts subagents() {
                return subagents;
            }

            /** /stats with the --premium-budget beside what was spent. */
            ObjectNode withBudget(ObjectNode stats) {
                ObjectNode premium = (ObjectNode) stats.path("premium");
                if (budget == null) premium.putNull("budget");
                else premium.put("budget", budget);
                return stats;
            }

            double spent() {
                return spentHundredths.get() / 100.0;
            }

            static double multiplier(JsonNode model) {
                return model == null ? 1 : model.path("billing").path("multiplier").asDouble(1);
            }

            static String format(double units) {
                return units == Math.rint(units) ? String.valueOf((long) units) : String.valueOf(Math.round(units * 100) / 100.0);
            }

            /** {@code --small-model off}: background calls keep the model asked for. */
            static final String OFF = "off";

            /**
             * What a call needs of the model that answers it: one of the endpoints the route can reach it on, tools and
             * images if the call carries them, and a prompt limit that holds its token estimate.
             */
            record Need(List<String> endpoints, boolean tools, boolean vision, long promptTokens) {
                /** Any chat model, on whichever endpoint: what a small-model slot in a client's settings needs. */
                static final Need ANY = new Need(List.of(AnthropicRoutes.MESSAGES, OpenAiRoutes.CHAT, ResponsesRoutes.RESPONSES), false, false, 0);

                /** A conservative estimate of a request's prompt tokens: one per three bytes of its body. */
                static long estimate(JsonNode body) {
                    return Json.write(body).getBytes(UTF_8).length / 3L;
                }

                boolean servedBy(JsonNode m) {
                    if (!ModelResolver.isChat(m)) return false;
                    List<String> served = ModelResolver.endpoints(m);
                    if (served.isEmpty()) served = List.of(OpenAiRoutes.CHAT);
                    if (served.stream().noneMatch(endpoints::contains)) return false;
                    JsonNode supports = m.path("capabilities").path("supports");
                    if (tools && !supports.path("tool_calls").asBoolean(false)) return false;
                    if (vision && !supports.path("vision").asBoolean(false)) return false;
                    JsonNode limits = m.path("capabilities").path("limits");
                    long limit = limits.path("max_prompt_tokens").asLong(limits.path("max_context_window_tokens").asLong(0));
                    return promptTokens <= limit;
                }
            }

            /**
             * The cheap model for a background call, the one choice every route makes: --small-model when given (if it can
             * serve the call); otherwise, on a usage-based plan (the catalog has token prices), the chat model with the
             * lowest input plus output price that can serve it, and on a legacy plan the catalog's first free one
             * (multiplier 0). Empty with --small-model off, or when no such model can serve the call: it keeps its model.
             */
            Optional<JsonNode> cheapModel(List<JsonNode> catalog, Need need) {
                if (OFF.equalsIgnoreCase(String.valueOf(smallModel))) return Optional.empty();
                if (smallModel != null) return ModelResolver.find(catalog, smallModel).filter(need::servedBy);
                boolean usageBased = catalog.stream().anyMatch(m -> m.path("billing").path("token_prices").isObject());
                JsonNode chosen = null;
                for (JsonNode m : catalog) {
                    if (!need.servedBy(m)) continue;
                    if (!usageBased) {
                        if (multiplier(m) == 0) return Optional.of(m);
                    } else if (m.path("billing").path("token_prices").isObject() && (chosen == null || price(m) < price(chosen))) {
                        chosen = m;
                    }
                }
                return Optional.ofNullable(chosen);
            }

            /** Input and output prices together, per token: what ranks models for a background call. */
            private static double price(JsonNode m) {
                JsonNode p = m.path("billing").path("token_prices");
                double batch = p.path("batch_size").asDouble(0) > 0 ? p.path("batch_size").asDouble() : 1_000_000;
                return (p.path("input_price").asDouble(0) + p.path("output_price").asDouble(0)) / batch;
            }

            /** At start: a --small-model that is not a chat model of Copilot's catalog, said once (background calls then keep their model). */
            Optional<String> checkSmallModel(ModelCatalog models) {
                if (smallModel == null || OFF.equalsIgnoreCase(smallModel)) return Optional.empty();
                List<JsonNode> catalog;
                try {
                    catalog = models.list();
                } catch (RuntimeException e) {
                    return Optional.empty();
                }
                if (catalog.isEmpty() || ModelResolver.find(catalog, smallModel).filter(ModelResolver::isChat).isPresent()) return Optional.empty();
                List<String> chat = catalog.stream().filter(ModelResolver::isChat).map(m -> m.path("id").asText()).toList();
                return Optional.of("--small-model " + smallModel + " is not a chat model in Copilot's catalog: background calls keep the model"
                    + " they ask for. Chat models: " + String.join(", ", chat));
            }

            /** --small-model as given (checked against the catalog at start), or null when copilot-api chooses. */
            String smallModel() {
                return smallModel;
            }

            /**
             * The charge for a call to a model of this multiplier, recorded on the exchange: a prompt bills unless it
             * opens a remembered subagent; a prompt past the budget is refused with a 429 before Copilot is called.
             */
            Charge charge(Context ctx, Turn turn, JsonNode model) {
                double multiplier = multiplier(model);
                Charge c = switch (turn.kind()) {
                    case WARMUP -> new Charge(Initiator.AGENT, Reason.WARMUP, multiplier, true);
                    case TITLE -> new Charge(Initiator.AGENT, Reason.TITLE, multiplier, turn.textLast());
                    case COMPACTION -> new Charge(Initiator.AGENT, Reason.COMPACTION, multiplier, turn.textLast());
                    case SIDE_CALL -> new Charge(Initiator.AGENT, Reason.SIDE_CALL, multiplier, turn.textLast());
                    case CONTINUATION -> new Charge(Initiator.AGENT, Reason.CONTINUATION, multiplier, turn.textLast());
                    case PROMPT -> turn.opensConversation() && subagents.isRemembered(turn.personText())
                        ? new Charge(Initiator.AGENT, Reason.SUBAGENT, multiplier, true)
                        : new Charge(Initiator.USER, multiplier == 0 ? Reason.FREE_MODEL : Reason.PREMIUM, multiplier);
                };
                spend(c);
                Exchange.of(ctx).charge = c;
                return c;
            }

            /**
             * One upstream call with the initiator Copilot accepts. The charge's agent goes as user at once where Copilot is
             * known to refuse it; where it is not known, agent is sent, and a 400 "invalid initiator" is answered by sending
             * the call once more as user (billed, and remembered for the model and endpoint). The ledger keeps what was sent.
             */
            <T> T send(Context ctx, String model, String endpoint, CallOptions call, java.util.function.Function<CallOptions, T> send) {
                Charge charge = Exchange.of(ctx).charge;
                if (charge == null || call.initiator() != Initiator.AGENT) return send.apply(call);
                if (initiators.refuses(model, endpoint, charge)) return send.apply(asUser(ctx, charge, call));
                try {
                    return send.apply(call);
                } catch (UpstreamException e) {
                    if (!InitiatorRule.isRefusal(e)) throw e;
                    initiators.learn(model, endpoint, charge);
                    Logs.log().info("Copilot refused X-Initiator agent for {} on {} ({}); sending it once more as user",
                        model, endpoint, charge.reason().label);
                    return send.apply(asUser(ctx, charge, call));
                }
            }

            /** The call as user after all: billed now (within the budget), the exchange's charge saying so. */
            private CallOptions asUser(Context ctx, Charge agent, CallOptions call) {
                Charge user = new Charge(Initiator.USER, agent.reason(), agent.multiplier(), agent.textLast());
                spend(user);
                Exchange.of(ctx).charge = user;
                return new CallOptions(Initiator.USER, call.vision(), call.headers(), call.watch());
            }

            /**
             * A charge is a reservation: it stands once Copilot answers (the exchange says so); a charge whose call Copilot
             * never answered (it failed, refused, or was never sent) is given back to the budget and leaves the ledger.
             * Called when the call fails and at the end of every request; once per request.
             */
            void settle(Exchange exchange) {
                Charge c;
                synchronized (exchange) {
                    c = exchange.charge;
                    if (c == null || exchange.answered) return;
                    exchange.charge = null;
                }
                long units = Math.round(c.units() * 100);
                if (units > 0) spentHundredths.addAndGet(-units);
            }

            private void spend(Charge c) {
                long units = Math.round(c.units() * 100);
                if (units == 0) return;
                long limit = budget == null ? Long.MAX_VALUE : Math.round(budget * 100);
                long before = spentHundredths.getAndUpdate(s -> s + units > limit ? s : s + units);
                if (before + units > limit) {
                    throw new ApiError(429, "rate_limit_error", "copilot-api's premium budget is spent: this prompt would cost "
                        + format(c.multiplier()) + " premium request(s), " + format(before / 100.0) + " of --premium-budget "
                        + format(budget) + " are used since start; tool follow-ups still pass, a new prompt needs a restart or a free model",
                        null, "premium_budget_exceeded");
                }
            }
        }

        /**
         * What a request costs in GitHub AI Credits (usage-based plans since June 2026; 1 credit = 10^9 nano-AIU): the real
         * figure when Copilot reports {@code copilot_usage.total_nano_aiu}, else an estimate from the answer's token counts
         * and the catalog's {@code billing.token_prices}. A model without prices is on a legacy plan: premium units tell
         * its cost ({@link Billing}). A failed or refused call costs nothing. The ledger keeps credits by model and UTC day
         * since start and holds {@code --budget}.
         */
        static final class Cost {
            static final double NANO_PER_CREDIT = 1e9;
            static final String HEADER = "x-copilot-api-cost";

            /** A request's cost in credits; estimated when Copilot did not say it. */
            record Figure(double credits, boolean estimated) {
                /** For the request log and the header: "0.0123 credits", "~0.0123 credits" for an estimate. */
                String describe() {
                    return (estimated ? "~" : "") + format(credits) + " credits";
                }
            }

            static String format(double credits) {
                return java.math.BigDecimal.valueOf(credits).round(new java.math.MathContext(4)).stripTrailingZeros().toPlainString();
            }

            /** total_nano_aiu of a copilot_usage at the top level of an answer or stream event, or inside its usage; -1 when absent. */
            static long reportedNano(JsonNode holder) {
                if (holder == null || !holder.isObject()) return -1;
                JsonNode u = holder.has("copilot_usage") ? holder.get("copilot_usage") : holder.path("usage").path("copilot_usage");
                JsonNode nano = u.path("total_nano_aiu");
                return nano.isNumber() ? Math.max(0, nano.asLong()) : -1;
            }

            /**
             * The estimate from token prices (credits per batch_size tokens): uncached input at input_price, cached input at
             * cache_price, output at output_price; the long-context tier's prices from its threshold of input tokens on.
             */
            static Optional<Figure> estimate(JsonNode prices, long input, long cached, long output) {
                if (prices == null || !prices.isObject() || (input < 0 && output < 0)) return Optional.empty();
                JsonNode tier = prices.path("long_context");
                long in = Math.max(0, input);
                if (tier.isObject() && tier.path("threshold_tokens").isNumber() && in >= tier.path("threshold_tokens").asLong()) {
                    prices = tier;
                }
                double batch = prices.path("batch_size").asDouble(0) > 0 ? prices.path("batch_size").asDouble() : 1_000_000;
                long hits = Math.min(in, Math.max(0, cached));
                double inputPrice = prices.path("input_price").asDouble(0);
                double credits = ((in - hits) * inputPrice + hits * prices.path("cache_price").asDouble(inputPrice)
                    + Math.max(0, output) * prices.path("output_price").asDouble(0)) / batch;
                return Optional.of(new Figure(credits, true));
            }

            /**
             * The catalog's prices for a model as last read (settling never waits for a fetch); missing when the model has
             * none (a legacy plan) or the catalog was never read.
             */
            static JsonNode prices(ModelCatalog models, String model) {
                if (model == null) return null;
                return models.known(model).map(m -> m.path("billing").path("token_prices")).filter(JsonNode::isObject).orElse(null);
            }

            /** What a finished model call cost: nothing when it failed or was refused, Copilot's figure, else the estimate. */
            static Optional<Figure> settle(Exchange e, int status, ModelCatalog models) {
                if (!e.invokesModel || status >= 400) return Optional.empty();
                if (e.nanoAiu >= 0) return Optional.of(new Figure(e.nanoAiu / NANO_PER_CREDIT, false));
                if (e.failedInStream) return Optional.empty();
                String model = e.upstreamModel != null ? e.upstreamModel : e.requestedModel;
                return estimate(prices(models, model), e.inputTokens, e.cachedTokens, e.outputTokens);
            }

            /** Where /usage and `check-usage --json` put the account's credits: billing kind, included, used, left, reset. */
            static final String REPORT = "copilot_api_credits";

            /** AI Credits copilot-api recorded since a time; null when it cannot say (no store, no history). */
            interface Spent {
                Double since(Instant from);
            }

            /**
             * The credits a plan includes each month: its price in cents (WIRE.md: Pro $10, Pro+ $39, Business $19,
             * Enterprise $39 a seat), told by copilot_plan and access_type_sku; empty for a plan not known here.
             */
            static Optional<Double> includedCredits(JsonNode usage) {
                String plan = usage.path("copilot_plan").asText("").toLowerCase(Locale.ROOT);
                String sku = usage.path("access_type_sku").asText("").toLowerCase(Locale.ROOT);
                if (plan.contains("enterprise")) return Optional.of(3900.0);
                if (plan.contains("business")) return Optional.of(1900.0);
                if (sku.contains("plus") || plan.contains("pro_plus") || plan.contains("pro+")) return Optional.of(3900.0);
                if (plan.equals("individual") || plan.contains("pro")) return Optional.of(1000.0);
                return Optional.empty();
            }

            /** When the plan's month resets: quota_reset_date_utc, else quota_reset_date (a day), else the next UTC month. */
            static Instant resets(JsonNode usage, Instant now) {
                for (String field : List.of("quota_reset_date_utc", "quota_reset_date")) {
                    String v = usage.path(field).asText("");
                    try {
                        if (v.length() == 10) return java.time.LocalDate.parse(v).atStartOfDay(ZoneOffset.UTC).toInstant();
                        if (!v.isEmpty()) return Instant.parse(v);
                    } catch (java.time.format.DateTimeParseException e) {
                        Logs.log().debug("unreadable {} in the usage report: {}", field, v);
                    }
                }
                return new Budget(0, Budget.Period.MONTH).resets(now);
            }

            /**
             * The account's credits for check-usage, /usage and the dashboard: billing kind and reset date; on a usage-based
             * plan the included credits, what went through copilot-api since the month began, and what is left of it.
             */
            static ObjectNode account(JsonNode usage, Spent spent, Instant now) {
                ObjectNode o = Json.object();
                boolean tokenBased = usage.path("token_based_billing").asBoolean(false);
                o.put("billing", tokenBased ? "usage-based" : "premium requests");
                Instant resets = resets(usage, now);
                // a reset date already past (a report not yet updated) means the month that runs now
                while (!resets.isAfter(now)) resets = resets.atZone(ZoneOffset.UTC).plusMonths(1).toInstant();
                o.put("resets", resets.toString());
                if (!tokenBased) return o;
                Instant monthStart = resets.atZone(ZoneOffset.UTC).minusMonths(1).toInstant();
                o.put("month_start", monthStart.toString());
                Double used = spent.since(monthStart);
                o.put("used_through_copilot_api", used);
                Optional<Double> included = includedCredits(usage);
                o.put("included", included.orElse(null));
                o.put("left", included.isPresent() && used != null ? Double.valueOf(Math.max(0, included.get() - used)) : null);
                return o;
            }

            /** "Billing: usage-based" and the credits line for check-usage. */
            static String render(JsonNode account) {
                StringBuilder b = new StringBuilder(String.format(Locale.ROOT, "%-17s %s", "Billing:",
                    account.path("billing").asText().equals("usage-based") ? "usage-based (AI Credits)" : "premium requests × multiplier"));
                if (!account.path("billing").asText().equals("usage-based")) return b.toString();
                b.append('\n').append(String.format(Locale.ROOT, "%-17s ", "AI Credits:"));
                JsonNode used = account.path("used_through_copilot_api");
                b.append(used.isNumber() ? format(used.asDouble()) + " used through copilot-api" : "use through copilot-api unknown (no store)");
                if (account.path("included").isNumber()) {
                    b.append(", of ").append(format(account.path("included").asDouble())).append(" included");
                    if (account.path("left").isNumber()) b.append(", at most ").append(format(account.path("left").asDouble())).append(" left");
                }
                b.append(" (month ").append(account.path("month_start").asText()).append(" to ").append(account.path("resets").asText()).append(')');
                return b.toString();
            }

            /** {@code --budget CREDITS[/day|/month]}: a period is a UTC day or a UTC calendar month. */
            record Budget(double credits, Period period) {
                enum Period { DAY, MONTH }

                static Budget parse(String text) {
                    String[] parts = text.trim().split("/", 2);
                    Period period = Period.MONTH;
                    if (parts.length == 2) {
                        period = switch (parts[1].trim().toLowerCase(Locale.ROOT)) {
                            case "day" -> Period.DAY;
                            case "month" -> Period.MONTH;
                            default -> throw new IllegalArgumentException("--budget is CREDITS, CREDITS/day or CREDITS/month, not " + text);
                        };
                    }
                    double credits;
                    try {
                        credits = Double.parseDouble(parts[0].trim());
                    } catch (NumberFormatException ex) {
                        throw new IllegalArgumentException("--budget is CREDITS, CREDITS/day or CREDITS/month, not " + text);
                    }
                    if (!(credits >= 0) || Double.isInfinite(credits)) throw new IllegalArgumentException("--budget must be 0 or more credits");
                    return new Budget(credits, period);
                }

                String label() {
                    return format(credits) + "/" + period.name().toLowerCase(Locale.ROOT);
                }

                /** When the period holding this instant ends (UTC). */
                Instant resets(Instant now) {
                    java.time.LocalDate day = now.atZone(ZoneOffset.UTC).toLocalDate();
                    java.time.LocalDate next = period == Period.DAY ? day.plusDays(1) : day.withDayOfMonth(1).plusMonths(1);
                    return next.atStartOfDay(ZoneOffset.UTC).toInstant();
                }

                boolean counts(String utcDay, Instant now) {
                    String today = Ledger.day(now);
                    return period == Period.DAY ? utcDay.equals(today) : utcDay.startsWith(today.substring(0, 7));
                }
            }

            /** Credits since start by model and by UTC day; the most expensive requests; --budget. */
            static final class Ledger {
                static final int MOST_EXPENSIVE = 10;
                static final int MAX_DAYS = 62;

                record Priced(String at, String model, String route, double credits, boolean estimated) {
                }

                private final Budget budget;
                private final Map<String, java.util.concurrent.atomic.DoubleAdder> byModel = new java.util.concurrent.ConcurrentSkipListMap<>();
                private final java.util.NavigableMap<String, java.util.concurrent.atomic.DoubleAdder> byDay = new java.util.concurrent.ConcurrentSkipListMap<>();
                private final java.util.concurrent.atomic.LongAdder estimated = new java.util.concurrent.atomic.LongAdder();
                private final java.util.concurrent.atomic.LongAdder reported = new java.util.concurrent.atomic.LongAdder();
                private final List<Priced> top = new ArrayList<>();

                Ledger(Budget budget) {
                    this.budget = budget;
                }

                static String day(Instant at) {
                    return at.atZone(ZoneOffset.UTC).toLocalDate().toString();
                }

                void add(String model, String route, Figure f, Instant at) {
                    String m = model == null ? "(unknown)" : model;
                    byModel.computeIfAbsent(m, k -> new java.util.concurrent.atomic.DoubleAdder()).add(f.credits());
                    byDay.computeIfAbsent(day(at), k -> new java.util.concurrent.atomic.DoubleAdder()).add(f.credits());
                    while (byDay.size() > MAX_DAYS) byDay.pollFirstEntry();
                    (f.estimated() ? estimated : reported).increment();
                    synchronized (top) {
                        top.add(new Priced(at.toString(), m, route, f.credits(), f.estimated()));
                        top.sort(java.util.Comparator.comparingDouble(Priced::credits).reversed());
                        if (top.size() > MOST_EXPENSIVE) top.remove(top.size() - 1);
                    }
                }

                /** Credits since start in the UTC days from this instant's day on. */
                double since(Instant from) {
                    double sum = 0;
                    for (var entry : byDay.tailMap(day(from), true).entrySet()) sum += entry.getValue().sum();
                    return sum;
                }

                double spent(Budget b, Instant now) {
                    double sum = 0;
                    for (var entry : byDay.entrySet()) if (b.counts(entry.getKey(), now)) sum += entry.getValue().sum();
                    return sum;
                }

                /** Before a model call: past --budget, a 429 that says what was spent and when the budget resets. */
                void admit(Instant now) {
                    if (budget == null) return;
                    double spent = spent(budget, now);
                    if (spent < budget.credits()) return;
                    Instant resets = budget.resets(now);
                    ApiError refused = new ApiError(429, "rate_limit_error", "copilot-api's budget is spent: " + format(spent)
                        + " credits of --budget " + budget.label() + " are used since start; it resets at " + resets, null, "budget_exceeded");
                    refused.headers().put("retry-after", String.valueOf(Math.max(1, Duration.between(now, resets).toSeconds())));
                    throw refused;
                }

                ObjectNode json(Instant now) {
                    ObjectNode o = Json.object();
                    String today = day(now);
                    double total = 0, month = 0;
                    ObjectNode days = Json.object();
                    for (var entry : byDay.entrySet()) {
                        double v = entry.getValue().sum();
                        total += v;
                        if (entry.getKey().startsWith(today.substring(0, 7))) month += v;
                        days.put(entry.getKey(), v);
                    }
                    o.put("credits", total);
                    o.put("today", Optional.ofNullable(byDay.get(today)).map(java.util.concurrent.atomic.DoubleAdder::sum).orElse(0.0));
                    o.put("this_month", month);
                    ObjectNode models = o.putObject("by_model");
                    byModel.forEach((m, v) -> models.put(m, v.sum()));
                    o.set("by_day", days);
                    o.put("reported_requests", reported.sum());
                    o.put("estimated_requests", estimated.sum());
                    ArrayNode expensive = o.putArray("most_expensive");
                    synchronized (top) {
                        for (Priced p : top) {
                            expensive.addObject().put("time", p.at()).put("model", p.model()).put("route", p.route())
                                .put("credits", p.credits()).put("estimated", p.estimated());
                        }
                    }
                    if (budget == null) {
                        o.putNull("budget");
                    } else {
                        o.putObject("budget").put("credits", budget.credits()).put("per", budget.period().name().toLowerCase(Locale.ROOT))
                            .put("spent", spent(budget, now)).put("resets", budget.resets(now).toString());
                    }
                    return o;
                }
            }
        }

        /**
         * The prompts of the Agent (older: Task) tool calls copilot-api relayed, for a while: a new conversation whose
         * last person-text is one of them is that subagent's first call. Bounded in count and in age.
         */
        static final class SubagentPrompts {
            static final int MAX_PROMPTS = 256;
            static final Duration MAX_AGE = Duration.ofHours(2);
            static final Set<String> TOOL_NAMES = Set.of("Agent", "Task");

            private final int max;
            private final Duration maxAge;
            private final LinkedHashMap<String, Instant> prompts = new LinkedHashMap<>();

            SubagentPrompts(int max, Duration maxAge) {
                this.max = max;
                this.maxAge = maxAge;
            }

            /** A tool call the answer carried: remembered when it starts a subagent and has a prompt. */
            void toolCall(String name, JsonNode input) {
                if (!TOOL_NAMES.contains(name) || input == null) return;
                String prompt = input.path("prompt").asText("");
                if (prompt.isBlank()) return;
                synchronized (prompts) {
                    prompts.remove(prompt);
                    prompts.put(prompt, Instant.now());
                    while (prompts.size() > max) prompts.remove(prompts.keySet().iterator().next());
                }
            }

            /** Arguments as the chat and Responses APIs carry them: a JSON text. */
            void toolCall(String name, String arguments) {
                if (!TOOL_NAMES.contains(name)) return;
                toolCall(name, Json.tryParse(arguments).orElse(null));
            }

            boolean isRemembered(String text) {
                if (text == null || text.isBlank()) return false;
                Instant oldest = Instant.now().minus(maxAge);
                synchronized (prompts) {
                    prompts.values().removeIf(t -> t.isBefore(oldest));
                    return prompts.containsKey(text);
                }
            }

            private void responsesItem(JsonNode item) {
                if (item.path("type").asText("").equals("function_call")) toolCall(item.path("name").asText(""), item.path("arguments").asText(""));
            }

            /** A per-stream reader of the tool calls going by, in whichever API's events the client gets. */
            ToolCallReader reader() {
                return new ToolCallReader();
            }

            final class ToolCallReader {
                /** Tool calls being streamed, by Anthropic block index or chat "choice/index": the name, then the argument text. */
                private final Map<String, String> names = new HashMap<>();
                private final Map<String, StringBuilder> inputs = new HashMap<>();

                /** Anthropic events: a tool_use block's start names it, its input_json_delta pieces are its input, its stop ends it. */
                void anthropicEvent(String name, JsonNode data) {
                    String key = data.path("index").asText("");
                    switch (name) {
                        case "content_block_start" -> {
                            JsonNode block = data.path("content_block");
                            if (block.path("type").asText("").equals("tool_use") && TOOL_NAMES.contains(block.path("name").asText(""))) {
                                names.put(key, block.path("name").asText());
                                inputs.put(key, new StringBuilder());
                            }
                        }
                        case "content_block_delta" -> {
                            StringBuilder input = inputs.get(key);
                            if (input != null) input.append(data.path("delta").path("partial_json").asText(""));
                        }
                        case "content_block_stop" -> {
                            StringBuilder input = inputs.remove(key);
                            if (input != null) toolCall(names.remove(key), input.toString());
                        }
                        default -> { }
                    }
                }

                /** Responses events: a function_call item is whole when it is done. */
                void responsesEvent(String name, JsonNode data) {
                    if (name.equals("response.output_item.done")) responsesItem(data.path("item"));
                }

                /** Chat chunks: tool-call names and argument pieces by choice and index, read whole at the end. */
                void chatChunk(JsonNode chunk) {
                    for (JsonNode choice : chunk.path("choices")) {
                        for (JsonNode call : choice.path("delta").path("tool_calls")) {
                            String key = choice.path("index").asInt(0) + "/" + call.path("index").asInt(0);
                            String fn = call.path("function").path("name").asText("");
                            if (!fn.isEmpty()) names.put(key, fn);
                            inputs.computeIfAbsent(key, k -> new StringBuilder()).append(call.path("function").path("arguments").asText(""));
                        }
                    }
                }

                void chatEnd() {
                    names.forEach((key, fn) -> toolCall(fn, inputs.getOrDefault(key, new StringBuilder()).toString()));
                    names.clear();
                    inputs.clear();
                }
            }

            /** Whether a request offers the model a subagent tool (Anthropic, chat or Responses tool list). */
            static boolean offered(JsonNode tools) {
                for (JsonNode t : tools) {
                    String name = t.has("function") ? t.path("function").path("name").asText("") : t.path("name").asText("");
                    if (TOOL_NAMES.contains(name)) return true;
                }
                return false;
            }
        }

        /** The dashboard: one self-contained page (no CDN) fed by /usage and /stats; API clients probing / get text. */
        static final class Dashboard {
            static boolean isPage(Context ctx) {
                return ctx.method() == io.javalin.http.HandlerType.GET && (ctx.path().equals("/") || ctx.path().equals("/dashboard"));
            }

            /** Browsers ask for it with every page; it is nothing, and never worth a 401 in the log. */
            static boolean isIcon(Context ctx) {
                return ctx.path().equals("/favicon.ico");
            }

            static void root(Context ctx) {
                String accept = Optional.ofNullable(ctx.header("accept")).orElse("");
                if (accept.contains("text/html")) page(ctx);
                else ctx.contentType("text/plain").result("copilot-api " + VERSION + " is running\n");
            }

            static void page(Context ctx) {
                ctx.header("Cache-Control", "no-store");
                ctx.contentType("text/html; charset=utf-8").result(HTML.replace("{{VERSION}}", VERSION));
            }

            static final String HTML = """
                <!doctype html>
                <html lang="en">
                <head>
                <meta charset="utf-8">
                <meta name="viewport" content="width=device-width, initial-scale=1">
                <title>copilot-api</title>
                <style>
                  :root { color-scheme: light dark; --bar: #2f81f7; --warn: #d29922; --bad: #f85149; --muted: #8b949e; }
                  body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 960px; padding: 1.5rem; }
                  h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
                  .muted { color: var(--muted); } .error { color: var(--bad); }
                  .quota { margin: .7rem 0; } .quota .head { display: flex; justify-content: space-between; }
                  .track { height: .7rem; border-radius: .35rem; background: color-mix(in srgb, var(--muted) 30%, transparent); overflow: hidden; }
                  .fill { height: 100%; background: var(--bar); } .fill.warn { background: var(--warn); } .fill.bad { background: var(--bad); }
                  table { border-collapse: collapse; width: 100%; } th, td { text-align: right; padding: .35rem .5rem; border-bottom: 1px solid color-mix(in srgb, var(--muted) 35%, transparent); }
                  th:first-child, td:first-child { text-align: left; } tfoot td { font-weight: 600; }
                  form { margin: 1rem 0; } input { font: inherit; padding: .3rem .5rem; } button { font: inherit; padding: .3rem .8rem; }
                  .scroll { overflow-x: auto; } code { font-size: .9em; overflow-wrap: anywhere; } pre { white-space: pre-wrap; overflow-wrap: anywhere; }
                  td.err { text-align: left; color: var(--bad); font-size: .9em; } dl { display: grid; grid-template-columns: max-content 1fr; gap: .3rem .8rem; }
                  dd { margin: 0; } @media (max-width: 600px) { body { padding: .7rem; font-size: 14px; } th, td { padding: .3rem .25rem; } dl { grid-template-columns: 1fr; } }
                </style>
                </head>
                <body>
                <h1>copilot-api <span class="muted">{{VERSION}}</span></h1>
                <div class="muted" id="updated">loading…</div>
                <form id="keyform" hidden>
                  <label>This server needs its API key: <input id="key" type="password" autocomplete="off"></label>
                  <button>Use key</button>
                </form>
                <div id="problem" class="error"></div>
                <h2>Copilot plan <span id="plan" class="muted"></span></h2>
                <div id="quotas"></div>
                <div id="spent" class="muted"></div>
                <h2>AI Credits <span id="billing" class="muted"></span></h2>
                <div id="credits"></div>
                <div id="background" class="muted"></div>
                <div class="scroll"><table id="expensive-table" hidden>
                  <thead><tr><th>most expensive</th><th>model</th><th>route</th><th>credits</th></tr></thead>
                  <tbody id="expensive"></tbody>
                </table></div>
                <h2>Requests since start <span id="since" class="muted"></span></h2>
                <div class="scroll"><table>
                  <thead><tr><th>model</th><th>requests</th><th>errors</th><th>input tokens</th><th>output tokens</th><th>median latency</th></tr></thead>
                  <tbody id="models"></tbody>
                  <tfoot id="totals"></tfoot>
                </table></div>
                <h2>Recent requests</h2>
                <div class="scroll"><table>
                  <thead><tr><th>time</th><th>request</th><th>model</th><th>status</th><th>first byte</th><th>total</th><th>tokens in / out</th></tr></thead>
                  <tbody id="recent"></tbody>
                </table></div>
                <h2>Last 7 days <span id="latency" class="muted"></span></h2>
                <div class="scroll"><table>
                  <thead><tr><th>model</th><th>requests</th><th>errors</th><th>p50</th><th>p95</th></tr></thead>
                  <tbody id="permodel"></tbody>
                </table></div>
                <div class="scroll"><table>
                  <thead><tr><th>day (UTC)</th><th>requests</th><th>errors</th></tr></thead>
                  <tbody id="perday"></tbody>
                </table></div>
                <h2>Connect</h2>
                <dl>
                  <dt>OpenAI base URL</dt><dd><code id="openai-url"></code></dd>
                  <dt>Anthropic base URL</dt><dd><code id="anthropic-url"></code></dd>
                  <dt>Copilot token</dt><dd id="token"></dd>
                  <dt>Store</dt><dd id="store"></dd>
                </dl>
                <p>Claude Code (<code>copilot-api start --claude-code</code> prints this for your shell):</p>
                <pre><code id="claude-command"></code></pre>
                <script>
                "use strict";
                const KEY = "copilot-api-key";
                const $ = (id) => document.getElementById(id);
                const fmt = (n) => Number(n).toLocaleString("en-US");
                const esc = (s) => String(s).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
                const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
                if (fromHash) { localStorage.setItem(KEY, fromHash); history.replaceState(null, "", location.pathname); }

                async function api(path) {
                  const key = localStorage.getItem(KEY);
                  const r = await fetch(path, { headers: key ? { "x-api-key": key } : {} });
                  if (r.status === 401) { $("keyform").hidden = false; throw new Error("an API key is needed"); }
                  const body = await r.json();
                  if (!r.ok) throw new Error((body.error && body.error.message) || ("HTTP " + r.status));
                  return body;
                }

                function quota(label, q) {
                  if (!q) return "";
                  if (q.unlimited) return `<div class="quota"><div class="head"><b>${label}</b><span>unlimited</span></div></div>`;
                  const total = q.entitlement || 0, left = q.remaining || 0, used = Math.max(0, total - left);
                  const pct = total > 0 ? (used * 100 / total) : 0;
                  const cls = pct >= 90 ? "bad" : pct >= 75 ? "warn" : "";
                  return `<div class="quota"><div class="head"><b>${label}</b>` +
                    `<span>${fmt(used)} / ${fmt(total)} used (${pct.toFixed(1)}%)</span></div>` +
                    `<div class="track"><div class="fill ${cls}" style="width:${Math.min(100, pct).toFixed(1)}%"></div></div></div>`;
                }

                function limit(label, w) {
                  if (!w) return "";
                  if (w.unlimited) return `<div class="quota"><div class="head"><b>${esc(label)}</b><span>unlimited</span></div></div>`;
                  const pct = Number(w.percent_used || 0), cls = pct >= 95 ? "bad" : pct >= 80 ? "warn" : "";
                  const reset = w.resets_at ? ` · resets ${esc(new Date(w.resets_at).toLocaleString())}` : "";
                  return `<div class="quota"><div class="head"><b>${esc(label)}</b><span>${pct.toFixed(1)}% used${reset}</span></div>` +
                    `<div class="track"><div class="fill ${cls}" style="width:${Math.min(100, pct).toFixed(1)}%"></div></div></div>`;
                }

                function limits(l) {
                  if (!l || !l.rate_limits) return "";
                  return Object.entries(l.rate_limits).map(([w, v]) => limit(w.charAt(0).toUpperCase() + w.slice(1) + " limit", v)).join("");
                }

                function spent(p) {
                  if (!p) return "";
                  const n = (x) => Number(x).toLocaleString("en-US", { maximumFractionDigits: 2 });
                  const budget = p.budget === null || p.budget === undefined ? "" : ` of a --premium-budget of ${n(p.budget)}`;
                  const models = Object.entries(p.by_model || {}).map(([m, u]) => `${esc(m)} ${n(u)}`).join(", ");
                  const reasons = Object.entries(p.calls_by_reason || {}).map(([r, c]) => `${esc(r)} ${fmt(c)}`).join(" · ");
                  return `<b>${n(p.units)}</b> premium requests spent by this server since start${budget}` +
                    (models ? ` (${models})` : "") + (reasons ? `<br>model calls by billing: ${reasons}` : "");
                }

                const cr = (x) => Number(x).toLocaleString("en-US", { maximumSignificantDigits: 4 });

                function credits(c, account, totals) {
                  if (!account || account.billing !== "usage-based") {
                    $("billing").textContent = account ? "· this plan bills premium requests, see above" : "";
                    $("expensive-table").hidden = true;
                    return "";
                  }
                  $("billing").textContent = `· usage-based · month resets ${new Date(account.resets).toLocaleDateString()}`;
                  const used = account.used_through_copilot_api === null ? c.this_month : account.used_through_copilot_api;
                  let out = account.included
                    ? quota("This month (through copilot-api) of the plan's included credits", { entitlement: account.included, remaining: account.included - used })
                    : `<div>This month: <b>${cr(used)}</b> credits</div>`;
                  const hits = totals.input_tokens > 0 ? (totals.cached_tokens * 100 / totals.input_tokens).toFixed(1) + "%" : "–";
                  out += `<div id="credits-today">Today: <b>${cr(c.today)}</b> credits · since start ${cr(c.credits)}` +
                    ` (${fmt(c.estimated_requests)} estimated) · cache hits ${hits} of input tokens</div>`;
                  if (c.budget) out += `<div>--budget ${cr(c.budget.credits)}/${esc(c.budget.per)}: ${cr(c.budget.spent)} spent, resets ${esc(new Date(c.budget.resets).toLocaleString())}</div>`;
                  $("expensive").innerHTML = (c.most_expensive || []).map((p) => `<tr><td>${esc(new Date(p.time).toLocaleString())}</td>` +
                    `<td>${esc(p.model)}</td><td>${esc(p.route || "")}</td><td>${p.estimated ? "~" : ""}${cr(p.credits)}</td></tr>`).join("");
                  $("expensive-table").hidden = !(c.most_expensive || []).length;
                  return out;
                }

                function background(b) {
                  if (!b || !b.calls) return "";
                  const kinds = Object.entries(b.by_kind || {}).map(([k, c]) => `${esc(k)} ${fmt(c)}`).join(" · ");
                  return `Background calls no person typed, sent to the cheap model: <b>${fmt(b.calls)}</b> (${kinds})` +
                    (b.credits > 0 ? ` · ${cr(b.credits)} credits` : "");
                }

                const ms = (n) => n === null || n === undefined ? "" : fmt(n) + " ms";

                function recent(r) {
                  const failed = r.status >= 400 || r.error_type;
                  const at = new Date(r.time), today = at.toDateString() === new Date().toDateString();
                  const line = `<tr><td>${esc(today ? at.toLocaleTimeString() : at.toLocaleString())}</td><td>${esc(r.method + " " + r.path)}</td>` +
                    `<td>${esc(r.requested_model || "")}${r.upstream_model && r.upstream_model !== r.requested_model ? " → " + esc(r.upstream_model) : ""}</td>` +
                    `<td${failed ? ' class="error"' : ""}>${r.status}</td><td>${ms(r.first_byte_ms)}</td><td>${ms(r.total_ms)}</td>` +
                    `<td>${r.input_tokens === null ? "" : fmt(r.input_tokens) + " / " + fmt(r.output_tokens || 0)}</td></tr>`;
                  return failed ? line + `<tr><td colspan="7" class="err">${esc((r.error_type || "error") + ": " + (r.error_message || ""))}</td></tr>` : line;
                }

                function connect(models) {
                  const origin = location.origin, claude = models.filter((m) => m.startsWith("claude"));
                  const main = claude.find((m) => m.includes("sonnet")) || claude[0] || "MODEL";
                  const small = claude.find((m) => m.includes("haiku")) || main;
                  $("openai-url").textContent = origin + "/v1";
                  $("anthropic-url").textContent = origin;
                  const key = localStorage.getItem(KEY) ? "YOUR_API_KEY" : "copilot-api";
                  $("claude-command").textContent = `ANTHROPIC_BASE_URL=${origin} ANTHROPIC_AUTH_TOKEN=${key} ANTHROPIC_MODEL=${main} ` +
                    `ANTHROPIC_SMALL_FAST_MODEL=${small} CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 claude`;
                }

                function summary(h) {
                  const t = h.copilot_token;
                  $("token").textContent = t.state === "valid" ? `valid, renewed before ${new Date(t.expires_at).toLocaleTimeString()} · ${t.api}`
                    : `${t.state}${t.error ? ": " + t.error : ""}`;
                  const st = h.store;
                  $("store").textContent = st.state === "off" ? "off (--no-store): nothing is kept"
                    : `${st.state}${st.error ? ": " + st.error : ""} · ${st.path} · kept ${st.max_age_days} days`;
                  $("latency").textContent = h.latency.requests ? `· p50 ${ms(h.latency.p50_ms)} · p95 ${ms(h.latency.p95_ms)}` : "";
                  $("permodel").innerHTML = h.per_model.map((m) => `<tr><td>${esc(m.model)}</td><td>${fmt(m.requests)}</td><td>${fmt(m.errors)}</td>` +
                    `<td>${ms(m.p50_ms)}</td><td>${ms(m.p95_ms)}</td></tr>`).join("") || `<tr><td colspan="5" class="muted">no requests yet</td></tr>`;
                  $("perday").innerHTML = h.per_day.map((d) => `<tr><td>${esc(d.day)}</td><td>${fmt(d.requests)}</td><td>${fmt(d.errors)}</td></tr>`).join("");
                }

                function row(m) {
                  return `<tr><td>${esc(m.model)}</td><td>${fmt(m.requests)}</td><td>${fmt(m.errors)}</td>` +
                    `<td>${fmt(m.input_tokens)}</td><td>${fmt(m.output_tokens)}</td><td>${m.median_latency_ms === undefined ? "" : fmt(m.median_latency_ms) + " ms"}</td></tr>`;
                }

                let account = null;

                async function refresh() {
                  const problems = [];
                  try {
                    const u = await api("/usage");
                    account = u.copilot_api_credits || null;
                    const s = u.quota_snapshots || {};
                    $("plan").textContent = `${u.copilot_plan || "unknown"} · quota resets ${u.quota_reset_date || "?"}`;
                    $("quotas").innerHTML = quota("Premium requests", s.premium_interactions) + quota("Chat", s.chat) + quota("Completions", s.completions)
                      + limits(u.copilot_api_limits);
                  } catch (e) { problems.push("usage: " + e.message); }
                  try {
                    const st = await api("/stats");
                    $("since").textContent = "· since " + new Date(st.since).toLocaleString();
                    $("models").innerHTML = st.models.map(row).join("") || `<tr><td colspan="6" class="muted">no requests yet</td></tr>`;
                    $("totals").innerHTML = row(Object.assign({ model: "total" }, st.totals));
                    $("spent").innerHTML = spent(st.premium);
                    $("credits").innerHTML = credits(st.credits, account, st.totals);
                    $("background").innerHTML = background(st.background);
                  } catch (e) { problems.push("stats: " + e.message); }
                  try {
                    summary(await api("/history/summary"));
                    const rows = await api("/history?limit=20").catch(() => ({ data: [] }));
                    $("recent").innerHTML = rows.data.map(recent).join("") || `<tr><td colspan="7" class="muted">no requests yet</td></tr>`;
                  } catch (e) { problems.push("history: " + e.message); }
                  try {
                    connect((await api("/v1/models")).data.map((m) => m.id));
                  } catch (e) { problems.push("models: " + e.message); }
                  $("problem").textContent = problems.join(" · ");
                  $("updated").textContent = "updated " + new Date().toLocaleTimeString() + " · refreshes every 5 s";
                }

                $("keyform").addEventListener("submit", (ev) => {
                  ev.preventDefault();
                  localStorage.setItem(KEY, $("key").value);
                  $("keyform").hidden = true;
                  refresh();
                });
                refresh();
                setInterval(refresh, 5000);
                </script>
                </body>
                </html>
                """;
        }
    }

    // ==== 3.3 Routes: the request pipeline, then one class per inbound API ====

    /** The model request pipeline (ModelCall) and the route classes of each inbound API. */
    static final class Routes {
        private Routes() {}

        /**
         * The one request pipeline every model route goes through: Copilot (through the chat pivot or an endpoint of its
         * own), its catalog, and the operator's controls. A route starts each request's way with call(ctx).
         */
        record Pipeline(CopilotClient copilot, ModelCatalog models, Controls controls) {
            /** One model request's way through the pipeline. */
            ModelCall call(Context ctx) {
                return new ModelCall(ctx, this);
            }

            /** The call options with this request's client watched while Copilot has not answered. */
            CallOptions watched(Context ctx, CallOptions call) {
                return call.watched(new ClientWatch(ctx, copilot.timeouts().earlyCommit(), copilot.timeouts().keepAlive()));
            }

            /** The pivot every chat-shaped call goes through. */
            ChatUpstream chat() {
                return new ChatUpstream(copilot, models);
            }
        }

        /**
         * One model request's way to Copilot, the same on every route. The route first checks its body, resolves the model
         * and prepares what Copilot is sent (so bad input is refused before anything else); then admit() (the operator's
         * approval, pacing, the client watched), reserve() against the budget, and send() with the initiator Copilot
         * accepts, settled by what Copilot did: a call that fails or is refused is released from the budget. An answer
         * goes to the client in one of two ways with the same stream machine, which records it (usage, Copilot's cost,
         * subagent prompts, stored Responses state) the same way for both: relay() streams it, fold() collects the
         * events of a whole answer (replayed as the stream it is equivalent to) for the fold into the client's JSON.
         */
        static final class ModelCall {
            private final Context ctx;
            private final Pipeline pipeline;
            private CallOptions call;

            private ModelCall(Context ctx, Pipeline pipeline) {
                this.ctx = ctx;
                this.pipeline = pipeline;
            }

            /** Waits for the operator's yes and the request's turn in the pacing; a client that leaves meanwhile is never sent. */
            ModelCall admit(String requested, int messages) {
                pipeline.controls().admit(ctx, requested, messages);
                return this;
            }

            /** The turn's charge reserved against the budget (a 429 past it), and the options the call goes with. */
            ModelCall reserve(Turn turn, JsonNode model, boolean vision, Map<String, String> headers) {
                Initiator initiator = pipeline.controls().billing().charge(ctx, turn, model).initiator();
                call = pipeline.watched(ctx, new CallOptions(initiator, vision, headers));
                return this;
            }

            ModelCall reserve(Turn turn, JsonNode model, boolean vision) {
                return reserve(turn, model, vision, Map.of());
            }

            /**
             * The model a background call goes to (Billing.cheapModel, the same choice on every route), or empty for any
             * other call and for one no cheap model can serve: it keeps the model asked for, and its log line says why.
             * The exchange records the background kind either way, for the log, /history and /stats. What the call needs is
             * worked out only for a background call: sizing a body is not free on a Claude Code prompt of 100 KB.
             */
            static Optional<String> cheap(Context ctx, Pipeline pipeline, Turn turn, Supplier<Billing.Need> needed) {
                if (!turn.kind().background()) return Optional.empty();
                Billing.Need need = needed.get();
                Exchange exchange = Exchange.of(ctx);
                exchange.background = turn.kind().label();
                List<JsonNode> catalog = pipeline.models().list();
                Billing billing = pipeline.controls().billing();
                Optional<String> cheap = billing.cheapModel(catalog, need).map(m -> m.path("id").asText());
                String small = billing.smallModel();
                if (cheap.isPresent()) return cheap;
                if (Billing.OFF.equalsIgnoreCase(String.valueOf(small))) {
                    exchange.note("--small-model off");
                } else {
                    exchange.note("kept on the model asked for: " + (small == null ? "no cheap model can" : "--small-model " + small + " cannot")
                        + " serve it (~" + need.promptTokens() + " prompt tokens" + (need.tools() ? ", tools" : "") + ")");
                }
                return cheap;
            }

            /** A stream, relayed to the client through the route's machine, which records what goes by. */
            void relay(String model, String endpoint, java.util.function.Function<CallOptions, EventSource> send, StreamMachine machine) {
                try (EventSource events = send(model, endpoint, send)) {
                    Relay.run(ctx, events, machine);
                }
            }

            /**
             * A whole answer, given as the stream it is equivalent to and run through the machine that stream would
             * use (so it is recorded the same way); its events are collected for the fold into the client's JSON.
             */
            List<Frame> fold(String model, String endpoint, java.util.function.Function<CallOptions, EventSource> send, StreamMachine machine) {
                try (EventSource events = send(model, endpoint, send)) {
                    return Relay.fold(events, machine);
                }
            }

            /** The call to Copilot at {@code endpoint}; the reservation stands if Copilot answers and is released if not. */
            private <T> T send(String model, String endpoint, java.util.function.Function<CallOptions, T> send) {
                if (call == null) throw new IllegalStateException("a model call is sent only after reserve()");
                Billing billing = pipeline.controls().billing();
                Exchange exchange = Exchange.of(ctx);
                try {
                    T answer = billing.send(ctx, model, endpoint, call, send);
                    exchange.answered = true;
                    return answer;
                } catch (RuntimeException e) {
                    billing.settle(exchange);
                    throw e;
                }
            }
        }

        /** The OpenAI-compatible routes, plus the small GitHub ones (/usage, /token). */
        static final class OpenAiRoutes {
            static final String CHAT = "/chat/completions";

            private final Pipeline pipeline;
            private final ModelRouting routing;
            private final GitHubAuth github;
            private final GitHubToken githubToken;

            OpenAiRoutes(Pipeline pipeline, ModelRouting routing, GitHubAuth github, GitHubToken githubToken) {
                this.pipeline = pipeline;
                this.routing = routing;
                this.github = github;
                this.githubToken = githubToken;
            }

            void models(Context ctx) {
                ctx.contentType("application/json").result(Json.write(ModelsView.list(pipeline.models().list())));
            }

            void model(Context ctx) {
                String id = ctx.pathParam("id");
                ApiError missing = new ApiError(404, "not_found_error", "The model '" + id + "' does not exist in the Copilot catalog");
                String base = id.endsWith(ModelResolver.LONG_SUFFIX) ? id.substring(0, id.length() - ModelResolver.LONG_SUFFIX.length()) : null;
                ObjectNode entry = base == null
                    ? ModelsView.entry(pipeline.models().find(id).orElseThrow(() -> missing))
                    : pipeline.models().find(base).flatMap(ModelsView::longEntry).orElseThrow(() -> missing);
                ctx.contentType("application/json").result(Json.write(entry));
            }

            /** Every chat model, whichever endpoint Copilot serves it on: the pivot decides, the answer is normalised. */
            void chatCompletions(Context ctx) {
                ObjectNode body = Requests.jsonObject(ctx);
                String requested = Requests.requireText(body, "model");
                JsonNode messages = Requests.requireArray(body, "messages");
                Requests.chat(body);
                Billing billing = pipeline.controls().billing();
                Turn turn = BackgroundCalls.chat(body);
                Optional<String> cheap = ModelCall.cheap(ctx, pipeline, turn, () -> new Billing.Need(List.of(CHAT, ResponsesRoutes.RESPONSES),
                    body.path("tools").size() > 0, Json.containsImage(messages), Billing.Need.estimate(body)));
                ModelResolver.Resolution resolved = cheap.isPresent() ? null : resolve(ctx, requested);
                String model = cheap.isPresent() ? cheap.get() : resolved.upstream();
                body.put("model", model);
                if (resolved != null && resolved.longContext()) body.put(LongContext.FIELD, LongContext.TIER);
                ChatUpstream chat = pipeline.chat();
                ChatUpstream.Endpoint endpoint = chat.endpoint(model);
                Exchange.of(ctx).model(requested, model).route(endpoint == ChatUpstream.Endpoint.CHAT ? "passthrough" : "translated");
                boolean stream = Requests.stream(body);
                // preparing translates where Copilot serves the model on /responses: bad input is refused before any charge
                ChatUpstream.Prepared prepared = chat.prepare(body, stream);
                ModelCall call = pipeline.call(ctx).admit(requested, messages.size())
                    .reserve(turn, pipeline.models().find(model).orElse(null), Json.containsImage(messages));
                Requests.logBody("chat request", body);
                boolean merge = body.path("n").asInt(1) <= 1 || endpoint == ChatUpstream.Endpoint.RESPONSES;
                String path = chat.path(model);
                // a whole answer keeps its usage; a stream gives it only to a client that asked
                boolean usage = !stream || body.path("stream_options").path("include_usage").asBoolean(false);
                ChatStreamNormalizer normalizer = new ChatStreamNormalizer(merge, usage);
                if (cheap.isPresent()) normalizer.named(requested);
                ChatRelay relay = new ChatRelay(normalizer, Exchange.of(ctx), billing.subagents().reader());
                if (stream) {
                    call.relay(model, path, c -> chat.stream(prepared, c), relay);
                    return;
                }
                ObjectNode answer = ChatChunks.completion(call.fold(model, path, c -> chat.answer(prepared, c), relay));
                Requests.logBody("chat answer", answer);
                Requests.writeJson(ctx, answer);
            }

            /**
             * The catalog's id for the name asked (the same resolution as the other APIs: dates, aliases, -fast); an
             * unknown name is a 404 listing close matches. With an empty catalog the name goes as asked and Copilot
             * judges; a catalog that cannot be read fails the request (CatalogUnavailable).
             */
            private ModelResolver.Resolution resolve(Context ctx, String requested) {
                List<JsonNode> catalog = pipeline.models().list();
                if (catalog.isEmpty()) return new ModelResolver.Resolution(requested, routing.mapped(requested), null);
                try {
                    return ModelResolver.resolve(requested, false, catalog, routing);
                } catch (ApiError unknown) {
                    Exchange.of(ctx).model(requested, null).invokesModel = true;
                    throw unknown;
                }
            }

            void embeddings(Context ctx) {
                ObjectNode body = Requests.jsonObject(ctx);
                String requested = Requests.requireText(body, "model");
                String model = routing.mapped(requested);
                Exchange.of(ctx).model(requested, model).route("passthrough");
                JsonNode input = body.path("input");
                if (!(input.isTextual() || (input.isArray() && input.size() > 0))) {
                    throw new ApiError(400, "invalid_request_error", "'input' must be a string or a non-empty array", "input", null);
                }
                pipeline.call(ctx).admit(requested, input.isArray() ? input.size() : 1);
                boolean base64 = "base64".equals(body.path("encoding_format").asText(""));
                ObjectNode upstreamBody = body.deepCopy();
                upstreamBody.put("model", model);
                if (base64) upstreamBody.remove("encoding_format");
                JsonNode answer = pipeline.copilot().postJson("/embeddings", upstreamBody, pipeline.watched(ctx, CallOptions.PLAIN));
                Exchange.of(ctx).usage(answer.path("usage").path("prompt_tokens").asLong(-1), 0);
                Requests.writeJson(ctx, base64 ? Embeddings.toBase64(answer) : answer);
            }

            /** GitHub's usage report, with the limits Copilot's own answers reported beside it. */
            void usage(Context ctx, Cost.Spent spent) {
                JsonNode usage = github.usage(githubToken);
                if (usage.isObject()) ((ObjectNode) usage).set(UsageReport.LIMITS, pipeline.copilot().limits().json());
                if (usage.isObject()) ((ObjectNode) usage).set(Cost.REPORT, Cost.account(usage, spent, Instant.now()));
                Requests.writeJson(ctx, usage);
            }

            void token(Context ctx) {
                CopilotToken t = pipeline.copilot().tokens().current();
                ObjectNode o = Json.object();
                o.put("token", t.token());
                o.put("expires_at", t.expiresAt());
                o.put("refresh_in", t.refreshIn());
                o.put("api", Http.shown(pipeline.copilot().baseUrl()));
                Requests.writeJson(ctx, o);
            }
        }

        /**
         * The Anthropic Messages routes. A Claude model that Copilot serves on /v1/messages is forwarded natively
         * (cleaned of what Copilot refuses); any other chat model goes through the chat-completions translator.
         */
        static final class AnthropicRoutes {
            static final String MESSAGES = "/v1/messages";
            static final String COUNT_TOKENS = "/v1/messages/count_tokens";
            static final String ANTHROPIC_VERSION = "2023-06-01";
            /** anthropic-beta values passed to Copilot; others (claude-code, context-management, ...) are dropped. */
            static final java.util.Set<String> KNOWN_BETAS = java.util.Set.of(
                "interleaved-thinking-2025-05-14", "fine-grained-tool-streaming-2025-05-14");

            private final Pipeline pipeline;
            private final ModelRouting routing;

            AnthropicRoutes(Pipeline pipeline, ModelRouting routing) {
                this.pipeline = pipeline;
                this.routing = routing;
            }

            void messages(Context ctx) {
                ObjectNode body = Requests.jsonObject(ctx);
                String requested = Requests.requireText(body, "model");
                JsonNode messages = Requests.requireArray(body, "messages");
                JsonNode maxTokens = body.get("max_tokens");
                if (maxTokens == null || maxTokens.isNull()) throw new ApiError(400, "invalid_request_error", "max_tokens: Field required", "max_tokens", null);
                if (!maxTokens.canConvertToInt() || !maxTokens.isIntegralNumber() || maxTokens.asInt() < 1) {
                    throw new ApiError(400, "invalid_request_error", "max_tokens: must be a positive integer", "max_tokens", null);
                }
                Requests.anthropic(body);
                Turn turn = BackgroundCalls.anthropic(body);
                ModelResolver.Resolution model = fast(ctx, resolve(ctx, requested, turn, body), body);
                boolean native_ = ModelResolver.endpoints(model.model()).contains(MESSAGES);
                if (!native_) pipeline.chat().endpoint(model.upstream());
                Exchange.of(ctx).route(native_ ? "native" : "translated");
                // translating checks the request: bad input is refused before the client waits its turn or anything is charged
                boolean stream = Requests.stream(body);
                AnthropicToChat.Result translated = native_ ? null : translation(body, model);
                ChatUpstream.Prepared prepared = native_ ? null : pipeline.chat().prepare(translated.chatRequest(), stream);
                ModelCall call = pipeline.call(ctx).admit(requested, messages.size());
                if (native_) call.reserve(turn, model.model(), Json.containsImage(messages), headers(ctx));
                else call.reserve(turn, model.model(), translated.vision());
                Requests.logBody("messages request", body);
                if (native_) forward(ctx, body, model, stream, call);
                else translate(ctx, translated, prepared, model, stream, call);
            }

            /** The model that answers: the one asked for, or the cheap one for a background call (still named as asked). */
            private ModelResolver.Resolution resolve(Context ctx, String requested, Turn turn, JsonNode body) {
                List<String> endpoints = List.of(MESSAGES, OpenAiRoutes.CHAT, ResponsesRoutes.RESPONSES);
                Optional<String> cheap = ModelCall.cheap(ctx, pipeline, turn, () -> new Billing.Need(endpoints, body.path("tools").size() > 0,
                    Json.containsImage(body.path("messages")), Billing.Need.estimate(body)));
                if (cheap.isEmpty()) return resolve(ctx, requested);
                ModelResolver.Resolution r = resolve(ctx, cheap.get());
                Exchange.of(ctx).model(requested, r.upstream());
                return new ModelResolver.Resolution(requested, r.upstream(), r.model());
            }

            /** speed "fast": the model's -fast variant where the catalog lists one (the field itself is not sent). */
            private ModelResolver.Resolution fast(Context ctx, ModelResolver.Resolution r, JsonNode body) {
                if (!body.path("speed").asText("").equals("fast")) return r;
                Optional<JsonNode> variant = ModelResolver.find(pipeline.models().list(), r.upstream() + ModelResolver.FAST_SUFFIX);
                if (variant.isEmpty()) {
                    Logs.log().info("{}: speed \"fast\" asked, but the catalog has no {}{}", MESSAGES, r.upstream(), ModelResolver.FAST_SUFFIX);
                    return r;
                }
                Exchange.of(ctx).model(r.requested(), variant.get().path("id").asText());
                return new ModelResolver.Resolution(r.requested(), variant.get().path("id").asText(), variant.get(), r.longContext());
            }

            void countTokens(Context ctx) {
                ObjectNode body = Requests.jsonObject(ctx);
                String requested = Requests.requireText(body, "model");
                Requests.requireArray(body, "messages");
                Requests.anthropic(body);
                ModelResolver.Resolution model = resolve(ctx, requested);
                boolean native_ = ModelResolver.endpoints(model.model()).contains(MESSAGES);
                java.util.OptionalInt exact = native_ ? exactCount(ctx, body, model) : java.util.OptionalInt.empty();
                int tokens;
                try {
                    tokens = exact.isPresent() ? exact.getAsInt() : TokenCounter.count(body, model.model());
                } catch (RuntimeException e) {
                    throw new ApiError(500, "api_error", "Could not estimate the token count: " + describe(e));
                }
                Exchange.of(ctx).route(exact.isPresent() ? "native" : "estimate");
                ObjectNode out = Json.object();
                out.put("input_tokens", tokens);
                Requests.writeJson(ctx, out);
            }

            /**
             * Copilot's own count for a Claude model it serves on /v1/messages (the body cleaned as for a message, the
             * Anthropic headers, the initiator the messages call for); empty, and logged, when that call fails.
             */
            private java.util.OptionalInt exactCount(Context ctx, ObjectNode body, ModelResolver.Resolution model) {
                AnthropicNative.Prepared prepared = AnthropicNative.prepare(body, model.upstream(), model.model());
                ObjectNode request = prepared.body();
                request.remove("stream");
                JsonNode messages = request.path("messages");
                CallOptions call = pipeline.watched(ctx, new CallOptions(Initiator.of(messages), Json.containsImage(messages), headers(ctx)));
                try {
                    JsonNode answer = pipeline.copilot().postJson(COUNT_TOKENS, request, call);
                    JsonNode n = answer.path("input_tokens");
                    if (n.canConvertToInt() && n.asInt() > 0) return java.util.OptionalInt.of(n.asInt());
                    Logs.log().warn("{}: Copilot's count has no input_tokens ({}); using the local estimate", COUNT_TOKENS, Redact.shorten(Json.write(answer)));
                } catch (ClientLeft gone) {
                    throw gone;
                } catch (RuntimeException e) {
                    Logs.log().warn("{}: Copilot's count failed ({}); using the local estimate", COUNT_TOKENS, describe(e));
                }
                return java.util.OptionalInt.empty();
            }

            /** An unknown model is logged with its name and counted in /stats as a failed request for it. */
            private ModelResolver.Resolution resolve(Context ctx, String requested) {
                boolean wants1m = wantsLong(ctx, "");
                Exchange exchange = Exchange.of(ctx).model(requested, null);
                try {
                    ModelResolver.Resolution r = ModelResolver.resolve(requested, wants1m, pipeline.models().list(), routing);
                    exchange.model(requested, r.upstream());
                    return r;
                } catch (ApiError unknown) {
                    exchange.invokesModel = true;
                    throw unknown;
                }
            }

            /** Claude Code asks for 1M tokens with a model name ending [1m] or the context-1m-* beta. */
            private static boolean wantsLong(Context ctx, String requested) {
                return requested.trim().toLowerCase(Locale.ROOT).endsWith(ModelResolver.LONG_SUFFIX)
                    || Optional.ofNullable(ctx.header("anthropic-beta")).orElse("").contains("context-1m");
            }

            private Map<String, String> headers(Context ctx) {
                Map<String, String> h = new LinkedHashMap<>();
                h.put("anthropic-version", ANTHROPIC_VERSION);
                List<String> betas = new ArrayList<>();
                for (String b : Optional.ofNullable(ctx.header("anthropic-beta")).orElse("").split(",")) {
                    if (KNOWN_BETAS.contains(b.trim())) betas.add(b.trim());
                }
                if (!betas.isEmpty()) h.put("anthropic-beta", String.join(",", betas));
                return h;
            }

            /** Native: the body cleaned for Copilot, the answer relayed as it comes. */
            private void forward(Context ctx, ObjectNode body, ModelResolver.Resolution model, boolean stream, ModelCall call) {
                AnthropicNative.Prepared prepared = AnthropicNative.prepare(body, model.upstream(), model.model());
                prepared.notes().forEach(n -> Logs.log().debug("{}: {}", MESSAGES, n));
                if (wantsLong(ctx, model.requested()) || body.has(LongContext.FIELD)) {
                    Logs.log().info("{}: the client asked for the long context ({}); Copilot's /v1/messages takes no {}, so {} runs at its default tier",
                        MESSAGES, LongContext.asked(model.requested(), ctx.header("anthropic-beta"), body), LongContext.FIELD, model.upstream());
                }
                SubagentPrompts subagents = pipeline.controls().billing().subagents();
                byte[] bytes = Json.splice(Requests.raw(ctx), body, prepared.body());
                // the content blocks are parsed only when the model was offered a tool that starts a subagent
                SubagentPrompts.ToolCallReader reader = SubagentPrompts.offered(body.path("tools")) ? subagents.reader() : null;
                NativeRelay machine = nativeRelay(Exchange.of(ctx), model.requested(), reader, prepared.omitThinking());
                if (stream) call.relay(model.upstream(), MESSAGES, c -> pipeline.copilot().stream(MESSAGES, bytes, c), machine);
                else Requests.writeJson(ctx, AnthropicEvents.message(call.fold(model.upstream(), MESSAGES,
                    c -> EventSource.whole(AnthropicEvents.of(pipeline.copilot().postJson(MESSAGES, bytes, c)), true), machine)));
            }

            /**
             * Copilot's own events, with the requested model name put back and the usage counted; the rest untouched
             * but for the content blocks, read when a reader is given (for subagent prompts).
             */
            static NativeRelay nativeRelay(Exchange exchange, String requestedModel, SubagentPrompts.ToolCallReader reader, boolean omitThinking) {
                return new NativeRelay(new NativeRelay.Api() {
                    @Override
                    public Set<String> inspected() {
                        return reader == null && !omitThinking ? INSPECTED : INSPECTED_WITH_BLOCKS;
                    }

                    @Override
                    public boolean drops(String name, ObjectNode data) {
                        return omitThinking && AnthropicNative.isOmittedThinking(name, data);
                    }

                    @Override
                    public void inspect(String name, ObjectNode data) {
                        if (reader != null) reader.anthropicEvent(name, data);
                        if (name.equals("message_start") && data.path("message").isObject()) {
                            ((ObjectNode) data.get("message")).put("model", requestedModel);
                            exchange.anthropicUsage(data.path("message").path("usage"));
                        } else if (name.equals("message_delta")) {
                            exchange.copilotUsage(data).anthropicUsage(data.path("usage"));
                        }
                    }

                    @Override
                    public Set<String> terminal() {
                        return TERMINAL;
                    }

                    @Override
                    public ObjectNode error(String message, long sequence) {
                        return AnthropicEvents.error("api_error", message);
                    }

                    @Override
                    public Frame keepAlive() {
                        return new NamedEvent("ping", AnthropicEvents.ping());
                    }
                });
            }

            static final Set<String> INSPECTED = Set.of("message_start", "message_delta");
            static final Set<String> INSPECTED_WITH_BLOCKS = Set.of("message_start", "message_delta",
                "content_block_start", "content_block_delta", "content_block_stop");
            static final Set<String> TERMINAL = Set.of("message_stop", "error");

            /** Translated: Anthropic in, chat to the pivot (which reaches /chat/completions or /responses), Anthropic out. */
            private static AnthropicToChat.Result translation(ObjectNode body, ModelResolver.Resolution model) {
                AnthropicToChat.Result t = AnthropicToChat.request(body, model.upstream(), ModelLimits.from(model.model(), model.longContext()));
                if (model.longContext()) t.chatRequest().put(LongContext.FIELD, LongContext.TIER);
                t.notes().forEach(n -> Logs.log().debug("{}: {}", MESSAGES, n));
                return t;
            }

            private void translate(Context ctx, AnthropicToChat.Result t, ChatUpstream.Prepared prepared, ModelResolver.Resolution model,
                    boolean stream, ModelCall call) {
                Requests.logBody("translated chat request", t.chatRequest());
                SubagentPrompts subagents = pipeline.controls().billing().subagents();
                String path = pipeline.chat().path(model.upstream());
                ChatStreamToAnthropic machine = new ChatStreamToAnthropic(model.requested(), t.toolNameMap());
                TranslatedRelay relay = new TranslatedRelay(machine, Exchange.of(ctx), subagents.reader()::anthropicEvent);
                if (stream) call.relay(model.upstream(), path, c -> pipeline.chat().stream(prepared, c), relay);
                else Requests.writeJson(ctx, AnthropicEvents.message(call.fold(model.upstream(), path, c -> pipeline.chat().answer(prepared, c), relay)));
                machine.notes().forEach(n -> Logs.log().warn("{}: {}", MESSAGES, n));
            }
        }

        /**
         * The Responses API: forwarded as is (event by event) for models Copilot serves on /responses, translated
         * through chat completions for every other chat model.
         */
        static final class ResponsesRoutes {
            static final String RESPONSES = "/responses";
            static final java.util.Set<String> TERMINAL = java.util.Set.of("response.completed", "response.incomplete", "response.failed", "error");

            private final Pipeline pipeline;
            private final ModelRouting routing;
            private final ResponsesState state;

            ResponsesRoutes(Pipeline pipeline, ModelRouting routing, ResponsesState state) {
                this.pipeline = pipeline;
                this.routing = routing;
                this.state = state;
            }

            /**
             * GET /v1/responses: Codex (supports_websockets = true) tries a WebSocket here first. 426 makes it use HTTP at
             * once (anything else costs five reconnects); without an upgrade there is no such route, as for any GET.
             */
            void upgrade(Context ctx) {
                if (!Optional.ofNullable(ctx.header("Upgrade")).orElse("").toLowerCase(Locale.ROOT).contains("websocket")) {
                    throw new ApiError(404, "not_found_error", "No route for GET " + ctx.path());
                }
                ApiError refused = new ApiError(426, "invalid_request_error", "copilot-api serves the Responses API over HTTP only, not WebSocket:"
                    + " send POST " + ctx.path() + " (for Codex: supports_websockets = false)", null, "websocket_not_supported");
                refused.headers().put("Connection", "close");
                Exchange.of(ctx).note("WebSocket refused, HTTP only");
                throw refused;
            }

            void create(Context ctx) {
                ObjectNode body = Requests.jsonObject(ctx);
                String requested = Requests.requireText(body, "model");
                JsonNode input = body.get("input");
                if (input == null || input.isNull()) throw new ApiError(400, "invalid_request_error", "Missing required parameter: 'input'", "input", null);
                if (!input.isTextual() && !input.isArray()) {
                    throw new ApiError(400, "invalid_request_error", "'input' must be a string or an array of input items", "input", null);
                }
                Requests.responses(body);
                ResponsesState.Resolved turn = state.resolve(body);
                Turn billed = BackgroundCalls.responses(body, turn.upstreamInput(), body.hasNonNull("previous_response_id"));
                Optional<String> cheap = ModelCall.cheap(ctx, pipeline, billed, () -> new Billing.Need(List.of(RESPONSES, OpenAiRoutes.CHAT),
                    body.path("tools").size() > 0, Json.containsImage(turn.upstreamInput()), Billing.Need.estimate(body)));
                ModelResolver.Resolution model = ModelResolver.resolve(cheap.orElse(requested), false, pipeline.models().list(), routing);
                Exchange.of(ctx).model(requested, model.upstream());
                List<String> endpoints = ModelResolver.endpoints(model.model());
                boolean native_ = endpoints.contains(RESPONSES);
                if (!native_ && !endpoints.isEmpty() && !endpoints.contains(OpenAiRoutes.CHAT)) {
                    throw new ApiError(400, "invalid_request_error", "The model '" + model.upstream() + "' is served by Copilot only on "
                        + String.join(", ", endpoints), "model", "unsupported_api_for_model");
                }
                Exchange.of(ctx).route(native_ ? "passthrough" : "translated");
                // preparing checks the request: bad input is refused before the client waits its turn or anything is charged
                boolean stream = Requests.stream(body);
                byte[] forwarded = native_ ? forwarded(turn, model) : null;
                Translated translated = native_ ? null : translation(turn, model);
                ChatUpstream.Prepared prepared = native_ ? null : pipeline.chat().prepare(translated.body(), stream);
                ModelCall call = pipeline.call(ctx).admit(requested, input.isArray() ? input.size() : 1)
                    .reserve(billed, model.model(), Json.containsImage(turn.upstreamInput()));
                Requests.logBody("responses request", body);
                // a background call's answer keeps the name asked for, as on every route
                String named = cheap.isPresent() ? requested : null;
                if (native_) forward(ctx, turn, forwarded, model, named, call, stream);
                else translate(ctx, turn, translated, prepared, model, named, call, stream);
            }

            /**
             * What Copilot wants on /responses: nothing stored, and the encrypted reasoning back when reasoning is on or
             * when copilot-api keeps the answer (its reasoning items go back to Copilot in later turns).
             */
            static ObjectNode forCopilot(ObjectNode body, String upstreamModel, boolean kept) {
                ObjectNode out = body.deepCopy();
                out.put("model", upstreamModel);
                out.put("store", false);
                withoutUnsupported(out).forEach(n -> Logs.log().debug("{}: {}", RESPONSES, n));
                if (kept || out.path("reasoning").isObject()) {
                    ArrayNode include = out.path("include").isArray() ? (ArrayNode) out.get("include") : out.putArray("include");
                    boolean present = false;
                    for (JsonNode i : include) present |= i.asText().equals("reasoning.encrypted_content");
                    if (!present) include.add("reasoning.encrypted_content");
                }
                return out;
            }

            /** What Copilot's /responses refuses: a service tier (it has one) and the image_generation tool (it cannot run it). */
            static List<String> withoutUnsupported(ObjectNode body) {
                List<String> notes = new ArrayList<>();
                if (body.remove("service_tier") != null) notes.add("dropped 'service_tier' (Copilot has one service tier)");
                if (body.path("tools").isArray()) {
                    ArrayNode kept = Json.array();
                    for (JsonNode tool : body.get("tools")) {
                        if (tool.path("type").asText().equals("image_generation")) notes.add("dropped the image_generation tool (Copilot cannot run it)");
                        else kept.add(tool);
                    }
                    if (kept.isEmpty()) body.remove("tools");
                    else body.set("tools", kept);
                    if (kept.isEmpty() && body.path("tool_choice").isObject()) body.remove("tool_choice");
                }
                return notes;
            }

            /** Copilot's cap on a /responses body (WIRE.md "Responses quirks": about 5 MiB upstream). */
            static final int BODY_CAP = 5 * 1024 * 1024;

            /** The body as sent, refused with a 413 before any call when it is over Copilot's cap. */
            static byte[] capped(JsonNode body) {
                byte[] bytes = Json.bytes(body);
                if (bytes.length > BODY_CAP) {
                    throw new ApiError(413, "invalid_request_error", "The request to Copilot's /responses would be " + bytes.length
                        + " bytes; Copilot accepts about " + BODY_CAP / (1024 * 1024) + " MiB. Shorten the input (compact the conversation or "
                        + "send smaller images or files).", null, "request_too_large");
                }
                return bytes;
            }

            /**
             * One call to Copilot's /responses, made once more when Copilot fails it under its cyber_policy (WIRE.md:
             * occasional false positives that a retry clears), as an error status or as a response whose status is
             * failed; what the second call answers is the caller's, whatever it is.
             */
            static JsonNode answerRetryingCyberPolicy(Supplier<JsonNode> call) {
                try {
                    JsonNode answer = call.get();
                    if (!failedUnderCyberPolicy(answer)) return answer;
                    logCyberPolicyRetry("a failed response");
                } catch (UpstreamException e) {
                    if (!e.body().contains(CYBER_POLICY)) throw e;
                    logCyberPolicyRetry("HTTP " + e.status());
                }
                return call.get();
            }

            /**
             * The same for a stream: its opening events are read ahead up to the first one past response.created and
             * response.in_progress; a response.failed under cyber_policy there is dropped and the call made again, anything
             * else is handed on with the events read ahead first.
             */
            static EventSource streamRetryingCyberPolicy(Supplier<EventSource> open) {
                EventSource first;
                try {
                    first = open.get();
                } catch (UpstreamException e) {
                    if (!e.body().contains(CYBER_POLICY)) throw e;
                    logCyberPolicyRetry("HTTP " + e.status());
                    return open.get();
                }
                List<EventSource.Item> ahead = new ArrayList<>();
                try {
                    for (EventSource.Item item = first.next(); ; item = first.next()) {
                        ahead.add(item);
                        if (!(item instanceof EventSource.Chunk c) || c.json().isEmpty()) break;
                        String type = c.event() != null ? c.event() : c.json().get().path("type").asText();
                        if (type.equals("response.created") || type.equals("response.in_progress")) continue;
                        if (type.equals("response.failed") && failedUnderCyberPolicy(c.json().get().path("response"))) {
                            first.close();
                            logCyberPolicyRetry("a failed response");
                            return open.get();
                        }
                        break;
                    }
                } catch (RuntimeException e) {
                    first.close();
                    throw e;
                }
                return new ReadAhead(ahead, first);
            }

            static final String CYBER_POLICY = "cyber_policy";

            static boolean failedUnderCyberPolicy(JsonNode response) {
                return response.path("status").asText().equals("failed") && response.path("error").toString().contains(CYBER_POLICY);
            }

            private static void logCyberPolicyRetry(String how) {
                Logs.log().warn("{}: Copilot failed the request under its cyber_policy ({}); asking once more", RESPONSES, how);
            }

            /** A stream whose first items were read ahead (to look at them) and are handed out again first. */
            static final class ReadAhead implements EventSource {
                private final java.util.ArrayDeque<Item> ahead;
                private final EventSource rest;

                ReadAhead(List<Item> ahead, EventSource rest) {
                    this.ahead = new java.util.ArrayDeque<>(ahead);
                    this.rest = rest;
                }

                @Override
                public Item next() {
                    return ahead.isEmpty() ? rest.next() : ahead.poll();
                }

                @Override
                public boolean ready() {
                    return !ahead.isEmpty() || rest.ready();
                }

                @Override
                public void attach(SseWriter out, Supplier<Frame> keepAlive) {
                    rest.attach(out, keepAlive);
                }

                @Override
                public void close() {
                    rest.close();
                }
            }

            /** The body Copilot's /responses is sent, refused with a 413 when it is past Copilot's cap. */
            private static byte[] forwarded(ResponsesState.Resolved turn, ModelResolver.Resolution model) {
                ObjectNode request = forCopilot(turn.resolved(), model.upstream(), turn.keep());
                if (model.longContext()) request.put(LongContext.FIELD, LongContext.TIER);
                return capped(request);
            }

            /** {@code named}: the model the answer names (a background call's, as asked), or null for Copilot's name. */
            private void forward(Context ctx, ResponsesState.Resolved turn, byte[] bytes, ModelResolver.Resolution model, String named,
                    ModelCall call, boolean stream) {
                SubagentPrompts subagents = pipeline.controls().billing().subagents();
                // the output items are parsed only when the model was offered a tool that starts a subagent
                SubagentPrompts.ToolCallReader reader = SubagentPrompts.offered(turn.resolved().path("tools")) ? subagents.reader() : null;
                NativeRelay machine = responsesRelay(Exchange.of(ctx), turn, state, reader, named);
                if (stream) {
                    call.relay(model.upstream(), RESPONSES, c -> streamRetryingCyberPolicy(() -> pipeline.copilot().stream(RESPONSES, bytes, c)), machine);
                    return;
                }
                List<Frame> events = call.fold(model.upstream(), RESPONSES, c -> EventSource.whole(
                    ResponseEvents.of(answerRetryingCyberPolicy(() -> pipeline.copilot().postJson(RESPONSES, bytes, c))), true), machine);
                Requests.writeJson(ctx, ResponseEvents.response(events));
            }

            /**
             * Named events copied through with their sequence numbers; only the lifecycle ones are parsed: for the usage,
             * to say whether the answer is stored, to name the model {@code named} when it is given, and to keep the
             * finished answer; and the finished output items when a reader is given (for subagent prompts).
             */
            static NativeRelay responsesRelay(Exchange exchange, ResponsesState.Resolved turn, ResponsesState state, SubagentPrompts.ToolCallReader reader,
                    String named) {
                return new NativeRelay(new NativeRelay.Api() {
                    @Override
                    public Set<String> inspected() {
                        return reader == null ? INSPECTED : INSPECTED_WITH_ITEMS;
                    }

                    @Override
                    public void inspect(String name, ObjectNode data) {
                        if (reader != null) reader.responsesEvent(name, data);
                        if (!data.path("response").isObject()) return;
                        ObjectNode response = ResponsesState.presented(data.get("response"), turn);
                        if (named != null) response.put("model", named);
                        data.set("response", response);
                        exchange.copilotUsage(data).responsesUsage(response.path("usage"));
                        if (TERMINAL.contains(name)) state.keep(turn, response);
                    }

                    @Override
                    public Set<String> terminal() {
                        return TERMINAL;
                    }

                    @Override
                    public ObjectNode error(String message, long sequence) {
                        return Errors.responsesStreamError(message, sequence);
                    }

                    @Override
                    public Frame keepAlive() {
                        return Frame.comment("keep-alive");
                    }
                });
            }

            static final Set<String> INSPECTED = Set.of("response.created", "response.in_progress", "response.completed",
                "response.incomplete", "response.failed");
            static final Set<String> INSPECTED_WITH_ITEMS = Set.of("response.created", "response.in_progress", "response.completed",
                "response.incomplete", "response.failed", "response.output_item.done");

            /** A chat model: Responses in, chat to the pivot, Responses events out. */
            private static Translated translation(ResponsesState.Resolved turn, ModelResolver.Resolution model) {
                Translated t = ResponsesToChat.request(turn.resolved());
                t.body().put("model", model.upstream());
                if (model.longContext()) t.body().put(LongContext.FIELD, LongContext.TIER);
                t.notes().forEach(n -> Logs.log().debug("{}: {}", RESPONSES, n));
                return t;
            }

            private void translate(Context ctx, ResponsesState.Resolved turn, Translated t, ChatUpstream.Prepared prepared,
                    ModelResolver.Resolution model, String named, ModelCall call, boolean stream) {
                ObjectNode body = turn.echo();
                Requests.logBody("translated chat request", t.body());
                String path = pipeline.chat().path(model.upstream());
                ChatStreamToResponses events = new ChatStreamToResponses(body, IdClock.SYSTEM);
                if (named != null) events.named(named);
                AsTranslation machine = new AsTranslation(events, r -> state.keep(turn, r));
                TranslatedRelay relay = new TranslatedRelay(machine, Exchange.of(ctx), pipeline.controls().billing().subagents().reader()::responsesEvent);
                if (stream) call.relay(model.upstream(), path, c -> pipeline.chat().stream(prepared, c), relay);
                else Requests.writeJson(ctx, ResponseEvents.response(call.fold(model.upstream(), path, c -> pipeline.chat().answer(prepared, c), relay)));
            }

            /** The Responses stream machine seen as a translation: its events are named by their type; it ends at a terminal one. */
            static final class AsTranslation implements TranslatedRelay.Translation {
                private final ChatStreamToResponses machine;
                private final Consumer<ObjectNode> finished;
                private boolean done;

                /** The finished response (from the terminal event) goes to {@code finished}, to be kept. */
                AsTranslation(ChatStreamToResponses machine, Consumer<ObjectNode> finished) {
                    this.machine = machine;
                    this.finished = finished;
                }

                @Override
                public List<NamedEvent> start() {
                    return List.of();
                }

                @Override
                public List<NamedEvent> onChunk(JsonNode chunk) {
                    return named(machine.onChunk(chunk));
                }

                @Override
                public List<NamedEvent> finish() {
                    return named(machine.finish());
                }

                @Override
                public List<NamedEvent> fail(String message) {
                    return named(machine.fail(message));
                }

                @Override
                public boolean done() {
                    return done;
                }

                @Override
                public NamedEvent keepAlive() {
                    return null;
                }

                private List<NamedEvent> named(List<ObjectNode> events) {
                    List<NamedEvent> out = new ArrayList<>();
                    for (ObjectNode e : events) {
                        String type = e.path("type").asText();
                        done |= TERMINAL.contains(type);
                        if (TERMINAL.contains(type) && e.path("response").isObject()) finished.accept((ObjectNode) e.get("response"));
                        out.add(new NamedEvent(type, e));
                    }
                    return out;
                }
            }
        }

        /**
         * Stateful Responses on every route: before the call, {@code previous_response_id} and {@code item_reference}
         * items are resolved from the store into full items (Copilot always gets {@code store: false} and the whole
         * input); after it, an answer whose request did not say {@code store: false} is kept. Also the GET and DELETE
         * routes on stored responses.
         */
        static final class ResponsesState {
            static final int DEFAULT_ITEMS = 20;
            static final int MAX_ITEMS = 100;

            /**
             * One request, resolved: the body to send on (full input, no previous_response_id), the body the answer
             * echoes (with store said explicitly), its own input items as stored, and whether the answer is kept.
             */
            record Resolved(ObjectNode resolved, ObjectNode echo, ArrayNode ownInput, String previousId, boolean keep) {
                JsonNode upstreamInput() {
                    return resolved.get("input");
                }
            }

            private final Store store;

            ResponsesState(Store store) {
                this.store = store;
            }

            Resolved resolve(ObjectNode body) {
                if (body.hasNonNull("conversation")) {
                    throw new ApiError(400, "invalid_request_error", "'conversation' is not supported: copilot-api keeps responses, not "
                        + "conversations. Chain turns with 'previous_response_id', or send the items in 'input'.", "conversation", null);
                }
                boolean keep = store.enabled() && body.path("store").asBoolean(true);
                String previous = body.path("previous_response_id").isTextual() ? body.get("previous_response_id").asText() : null;
                ArrayNode own = ownInput(body.get("input"), previous);
                ObjectNode resolved = body.deepCopy();
                resolved.remove("previous_response_id");
                if (previous != null || body.get("input").isArray()) {
                    ArrayNode full = Json.array();
                    if (previous != null) full.addAll(earlierTurns(previous));
                    full.addAll(own);
                    resolved.set("input", upstream(full));
                }
                ObjectNode echo = body.deepCopy();
                echo.put("store", keep);
                return new Resolved(resolved, echo, own, previous, keep);
            }

            /**
             * The request's input as items: a string becomes a user message; references become the items they name; every
             * item gets an id (see {@link #madeId}).
             */
            private ArrayNode ownInput(JsonNode input, String previous) {
                ArrayNode out = Json.array();
                if (input.isTextual()) {
                    ObjectNode m = out.addObject().put("type", "message").put("role", "user");
                    m.putArray("content").addObject().put("type", "input_text").put("text", input.asText());
                } else {
                    for (JsonNode item : input) {
                        out.add(item.path("type").asText().equals("item_reference") ? referenced(item.path("id").asText("")) : item.deepCopy());
                    }
                }
                for (int i = 0; i < out.size(); i++) {
                    if (!out.get(i).hasNonNull("id") && out.get(i) instanceof ObjectNode o) o.put("id", madeId(o, previous, i));
                }
                return out;
            }

            /**
             * The id of an item the client sent without one (the API allows it; some clients leave out the ids even of the
             * model's reasoning and calls they send back), made from the item, its place in the input and the response it
             * continues: a conversation sent again gets the same ids, so it reaches Copilot as the same bytes and its prompt
             * cache holds (a random id broke it at the first call or reasoning item), while two items of one request, or
             * an equal item of a later turn, never share one. The prefix is the one the Responses API expects of the
             * type: it refuses a function_call id that does not start with fc.
             */
            static String madeId(ObjectNode item, String previous, int index) {
                Responses.Kind kind = switch (item.path("type").asText("message")) {
                    case "reasoning" -> Responses.Kind.REASONING;
                    case "function_call" -> Responses.Kind.FUNCTION_CALL;
                    case "custom_tool_call" -> Responses.Kind.CUSTOM_CALL;
                    default -> Responses.Kind.MESSAGE;
                };
                return Ids.derived(kind.idPrefix, (previous == null ? "" : previous) + "#" + index, item);
            }

            private JsonNode referenced(String id) {
                return store.item(id).<JsonNode>map(JsonNode::deepCopy).orElseThrow(() -> new ApiError(404, "invalid_request_error",
                    "Item with id '" + id + "' not found. Items are not persisted when `store` is set to false"
                        + (store.enabled() ? "" : " (and copilot-api runs with --no-store)")
                        + ". Try again with `store` set to true, or send the item itself instead of an item_reference.", "input", null));
            }

            /** The input and output of every earlier turn, oldest first; a missing link is a 404, never a silent answer without it. */
            private List<JsonNode> earlierTurns(String previous) {
                java.util.Deque<Store.StoredResponse> chain = new java.util.ArrayDeque<>();
                Set<String> seen = new java.util.HashSet<>();
                for (String id = previous; id != null && seen.add(id); ) {
                    String wanted = id;
                    Store.StoredResponse r = store.response(id).orElseThrow(() -> new ApiError(404, "invalid_request_error",
                        "Previous response with id '" + wanted + "' not found" + (wanted.equals(previous) ? "" : " (an earlier turn of '" + previous + "')")
                            + (store.enabled() ? "; it was never stored, has expired or was deleted." : "; copilot-api runs with --no-store."),
                        "previous_response_id", null));
                    chain.addFirst(r);
                    id = r.previousId();
                }
                List<JsonNode> items = new ArrayList<>();
                for (Store.StoredResponse r : chain) {
                    r.input().forEach(items::add);
                    r.response().path("output").forEach(items::add);
                }
                return items;
            }

            /**
             * Copies for Copilot: the ids copilot-api gave the client's own prompts and tool outputs stay here (they are for
             * the store's listings and references). What the model produced (assistant messages, reasoning, compaction,
             * calls) keeps its id, the client's or one made by {@link #madeId}, the same in every turn.
             */
            private static ArrayNode upstream(ArrayNode items) {
                ArrayNode out = Json.array();
                for (JsonNode item : items) {
                    ObjectNode copy = (ObjectNode) item.deepCopy();
                    if (!producedByModel(copy)) copy.remove("id");
                    out.add(copy);
                }
                return out;
            }

            private static boolean producedByModel(JsonNode item) {
                String type = item.path("type").asText("message");
                if (type.equals("message")) return item.path("role").asText().equals("assistant");
                return type.equals("reasoning") || type.equals("compaction") || type.endsWith("_call");
            }

            /** The answer as the client gets it: whether it is stored, and which response it continues. */
            static ObjectNode presented(JsonNode response, Resolved turn) {
                ObjectNode out = (ObjectNode) response.deepCopy();
                out.put("store", turn.keep());
                if (turn.previousId() != null) out.put("previous_response_id", turn.previousId());
                else out.putNull("previous_response_id");
                return out;
            }

            /** Keeps a finished answer (completed or incomplete) of a turn that asked to be stored. */
            void keep(Resolved turn, JsonNode response) {
                String status = response.path("status").asText("");
                if (!turn.keep() || !response.path("id").isTextual() || !(status.equals("completed") || status.equals("incomplete"))) return;
                store.saveResponse(new Store.StoredResponse(response.path("id").asText(), System.currentTimeMillis(), turn.previousId(),
                    presented(response, turn), turn.ownInput()));
            }

            // -- GET /v1/responses/{id}, GET /v1/responses/{id}/input_items, DELETE /v1/responses/{id}

            void get(Context ctx) {
                Requests.writeJson(ctx, stored(ctx.pathParam("id")).response());
            }

            void inputItems(Context ctx) {
                Store.StoredResponse r = stored(ctx.pathParam("id"));
                int limit = Requests.queryInt(ctx, "limit", DEFAULT_ITEMS, 1, MAX_ITEMS);
                String order = Optional.ofNullable(ctx.queryParam("order")).orElse("desc");
                if (!order.equals("asc") && !order.equals("desc")) throw Requests.invalid("order", "must be 'asc' or 'desc'");
                List<JsonNode> items = new ArrayList<>();
                r.input().forEach(items::add);
                if (order.equals("desc")) java.util.Collections.reverse(items);
                String after = ctx.queryParam("after");
                int start = 0;
                if (after != null) {
                    while (start < items.size() && !items.get(start).path("id").asText().equals(after)) start++;
                    start++;
                }
                List<JsonNode> page = items.subList(Math.min(start, items.size()), Math.min(items.size(), start + limit));
                ObjectNode list = Json.object().put("object", "list");
                list.putArray("data").addAll(page);
                if (page.isEmpty()) {
                    list.putNull("first_id");
                    list.putNull("last_id");
                } else {
                    list.put("first_id", page.get(0).path("id").asText());
                    list.put("last_id", page.get(page.size() - 1).path("id").asText());
                }
                list.put("has_more", start + page.size() < items.size());
                Requests.writeJson(ctx, list);
            }

            void delete(Context ctx) {
                String id = ctx.pathParam("id");
                if (!store.deleteResponse(id)) throw notFound(id);
                Requests.writeJson(ctx, Json.object().put("id", id).put("object", "response").put("deleted", true));
            }

            private Store.StoredResponse stored(String id) {
                return store.response(id).orElseThrow(() -> notFound(id));
            }

            private ApiError notFound(String id) {
                return new ApiError(404, "invalid_request_error", "Response with id '" + id + "' not found."
                    + (store.enabled() ? "" : " copilot-api runs with --no-store and keeps no responses."), null, null);
            }
        }

        /**
         * The Gemini API: generateContent, streamGenerateContent (SSE with ?alt=sse, else one JSON array), countTokens and
         * the model list, under /v1beta, /v1 and bare /models. Every chat model goes through the chat pivot; nothing is
         * kept on the server. Errors are Google's shape (Errors picks it for the requests {@link #serves} says are Gemini's).
         */
        static final class GeminiRoutes {
            static final List<String> PREFIXES = List.of("/v1beta", "/v1", "");
            /** What Google's clients send that OpenAI's and Anthropic's do not: their key header, their client header, ?key=. */
            static final List<String> CLIENT_HEADERS = List.of("x-goog-api-key", "x-goog-api-client");

            private final Pipeline pipeline;
            private final ModelRouting routing;

            GeminiRoutes(Pipeline pipeline, ModelRouting routing) {
                this.pipeline = pipeline;
                this.routing = routing;
            }

            /** A Gemini request: anything under /v1beta, a models/{model}:method call, or the model list asked by a Google client. */
            static boolean serves(Context ctx) {
                String p = ctx.path();
                if (p.startsWith("/v1beta/") || p.equals("/v1beta")) return true;
                String rest = p.startsWith("/v1/") ? p.substring(3) : p;
                if (!rest.equals("/models") && !rest.startsWith("/models/")) return false;
                return rest.contains(":") || CLIENT_HEADERS.stream().anyMatch(h -> ctx.header(h) != null) || ctx.queryParam("key") != null;
            }

            void generateContent(Context ctx) {
                generate(ctx, ctx.pathParam("model"), false);
            }

            /** ?alt=sse: server-sent events as they come; without it Google answers a JSON array, here of the one whole answer. */
            void streamGenerateContent(Context ctx) {
                generate(ctx, ctx.pathParam("model"), true);
            }

            private void generate(Context ctx, String requested, boolean stream) {
                ObjectNode body = Requests.jsonObject(ctx);
                boolean sse = stream && "sse".equals(ctx.queryParam("alt"));
                // a side call (no person's prompt) goes where every background call goes: the one cheap-model choice
                Turn side = sideCall(ctx, body, stream) ? new Turn(Turn.Kind.SIDE_CALL, null, true, true) : null;
                Optional<String> cheap = side == null ? Optional.empty() : ModelCall.cheap(ctx, pipeline, side,
                    () -> new Billing.Need(List.of(OpenAiRoutes.CHAT, ResponsesRoutes.RESPONSES), false, false, Billing.Need.estimate(body)));
                ModelResolver.Resolution model = resolve(ctx, cheap.orElse(requested));
                if (cheap.isPresent()) {
                    Exchange.of(ctx).model(requested, model.upstream());
                    model = new ModelResolver.Resolution(requested, model.upstream(), model.model());
                }
                ChatUpstream chat = pipeline.chat();
                boolean byEffort = chat.endpoint(model.upstream()) == ChatUpstream.Endpoint.RESPONSES
                    || model.model().path("capabilities").path("supports").has("reasoning_effort");
                Exchange.of(ctx).route("translated");
                // translating checks the request: bad input is refused before the client waits its turn or anything is charged
                GeminiToChat.Result t = GeminiToChat.request(body, model.upstream(),
                    new GeminiToChat.Reasoning(ModelLimits.from(model.model()), byEffort), sse);
                t.notes().forEach(n -> Logs.log().debug("gemini {}: {}", ctx.path(), n));
                t.dropped().forEach(n -> Logs.log().info("gemini {}: {}", ctx.path(), n));
                ChatUpstream.Prepared prepared = chat.prepare(t.chatRequest(), sse);
                JsonNode messages = t.chatRequest().path("messages");
                Turn turn = side != null ? side : Turn.ofMessages(messages);
                ModelCall call = pipeline.call(ctx).admit(model.requested(), body.path("contents").size())
                    .reserve(turn, model.model(), t.vision());
                Requests.logBody("translated chat request", t.chatRequest());
                String path = chat.path(model.upstream());
                boolean merge = t.chatRequest().path("n").asInt(1) <= 1;
                // a side call's answer keeps the name asked for, as a background call does on every route
                String version = cheap.isPresent() ? requested : model.upstream();
                ChatStreamToGemini machine = new ChatStreamToGemini(version, t.includeThoughts(), merge, IdClock.SYSTEM);
                TranslatedRelay relay = new TranslatedRelay(machine, Exchange.of(ctx), (name, data) -> { });
                if (sse) {
                    call.relay(model.upstream(), path, c -> chat.stream(prepared, c), relay);
                } else {
                    ObjectNode response = GeminiEvents.response(call.fold(model.upstream(), path, c -> chat.answer(prepared, c), relay));
                    // without alt=sse Google answers a stream as one JSON array of its events: here, the one whole answer
                    Requests.writeJson(ctx, stream ? Json.array().add(response) : response);
                }
                machine.notes().forEach(n -> Logs.log().warn("gemini {}: {}", ctx.path(), n));
            }

            /** {"contents": ...} or {"generateContentRequest": {...}}: an estimate with the model's tokenizer. */
            void countTokens(Context ctx) {
                String requested = ctx.pathParam("model");
                ObjectNode body = Requests.jsonObject(ctx);
                JsonNode request = body.path("generateContentRequest").isObject() ? body.get("generateContentRequest") : body;
                ModelResolver.Resolution model = resolve(ctx, requested);
                GeminiToChat.request(request, model.upstream(), new GeminiToChat.Reasoning(ModelLimits.from(model.model()), false), false);
                Exchange.of(ctx).route("estimate");
                Requests.writeJson(ctx, Json.object().put("totalTokens", GeminiTokens.count(request, model.model())));
            }

            void models(Context ctx) {
                Requests.writeJson(ctx, GeminiModels.list(pipeline.models().list()));
            }

            void model(Context ctx) {
                String id = ctx.pathParam("id");
                String name = id.startsWith("models/") ? id.substring("models/".length()) : id;
                Requests.writeJson(ctx, GeminiModels.entry(ModelResolver.resolve(name, false, pipeline.models().list(), routing).model()));
            }

            /** Google's names ("models/gemini-2.5-pro") resolved as every API resolves them; an unknown one is a 404 with close matches. */
            private ModelResolver.Resolution resolve(Context ctx, String requested) {
                String name = requested.startsWith("models/") ? requested.substring("models/".length()) : requested;
                if (name.isBlank()) throw Gemini.invalid("model", "is required");
                Exchange exchange = Exchange.of(ctx).model(name, null);
                List<JsonNode> catalog = pipeline.models().list();
                ModelResolver.Resolution r;
                try {
                    r = ModelResolver.resolve(name, false, catalog, routing);
                } catch (ApiError unknown) {
                    Optional<JsonNode> standIn = GeminiModels.standIn(name, catalog);
                    if (standIn.isEmpty()) {
                        exchange.invokesModel = true;
                        throw unknown;
                    }
                    r = new ModelResolver.Resolution(name, standIn.get().path("id").asText(), standIn.get());
                    Logs.log().info("gemini: {} is not in Copilot's catalog; {} answers for it (--model-map {}=... picks another)",
                        name, r.upstream(), name);
                }
                exchange.model(name, r.upstream());
                return r;
            }

            /**
             * Gemini CLI's side calls (its router, loop and next-speaker checks, summaries, the compressor): every one a
             * non-streamed generateContent declaring no function, while its main turns always stream with its tools. They
             * are background work: the cheap model answers them (ModelCall.cheap), as it answers Claude Code's warm-up.
             */
            static boolean sideCall(Context ctx, JsonNode body, boolean stream) {
                boolean cli = Optional.ofNullable(ctx.header("user-agent")).orElse("").startsWith("GeminiCLI");
                return cli && !stream && !GeminiToChat.declaresFunctions(body);
            }
        }

        /** The model list, readable by OpenAI clients and Anthropic clients alike. */
        static final class ModelsView {
            static ObjectNode list(List<JsonNode> models) {
                ObjectNode o = Json.object();
                o.put("object", "list");
                ArrayNode data = o.putArray("data");
                for (JsonNode m : models) {
                    data.add(entry(m));
                    longEntry(m).ifPresent(data::add);
                }
                o.put("has_more", false);
                o.put("first_id", data.isEmpty() ? null : data.get(0).path("id").asText());
                o.put("last_id", data.isEmpty() ? null : data.get(data.size() - 1).path("id").asText());
                return o;
            }

            static ObjectNode entry(JsonNode m) {
                ObjectNode e = Json.object();
                String id = m.path("id").asText();
                e.put("id", id);
                e.put("object", "model");
                e.put("type", "model");
                e.put("created", 0);
                e.put("created_at", "1970-01-01T00:00:00Z");
                e.put("owned_by", m.path("vendor").asText("github-copilot"));
                e.put("display_name", m.path("name").asText(id));
                JsonNode limits = m.path("capabilities").path("limits");
                if (limits.has("max_context_window_tokens")) e.put("context_window", limits.path("max_context_window_tokens").asInt());
                if (limits.has("max_output_tokens")) e.put("max_output_tokens", limits.path("max_output_tokens").asInt());
                if (m.has("supported_endpoints")) e.set("supported_endpoints", m.get("supported_endpoints"));
                usageBasedFields(m, e);
                return e;
            }

            /**
             * The catalog's mid-2026 fields, where a model has them: billing.token_prices (with its long-context tier),
             * supports.web_search, the reasoning-effort values (xhigh, max, ...) and the long tier's limits.
             */
            static void usageBasedFields(JsonNode m, ObjectNode e) {
                JsonNode prices = m.path("billing").path("token_prices");
                if (prices.isObject()) e.set("token_prices", prices);
                JsonNode supports = m.path("capabilities").path("supports");
                if (supports.path("web_search").isBoolean()) e.put("web_search", supports.path("web_search").asBoolean());
                JsonNode efforts = supports.has("reasoning_effort") ? supports.path("reasoning_effort") : supports.path("reasoning_efforts");
                if (efforts.isArray()) e.set("reasoning_efforts", efforts);
                JsonNode longTier = m.path("capabilities").path("limits").path("long_context");
                if (longTier.isObject()) e.set("long_context_limits", longTier);
            }

            /** A model with a long tier of known size is listed once more as "id[1m]", with the long tier's limits. */
            static Optional<ObjectNode> longEntry(JsonNode m) {
                Optional<JsonNode> tier = ModelLimits.longTier(m).filter(t -> t.has("max_context_window_tokens"));
                if (tier.isEmpty()) return Optional.empty();
                ObjectNode e = entry(m);
                String id = m.path("id").asText() + ModelResolver.LONG_SUFFIX;
                e.put("id", id);
                e.put("display_name", m.path("name").asText(m.path("id").asText()) + " (long context)");
                e.put("context_window", tier.get().path("max_context_window_tokens").asInt());
                if (tier.get().has("max_output_tokens")) e.put("max_output_tokens", tier.get().path("max_output_tokens").asInt());
                return Optional.of(e);
            }
        }
    }

    // ==== 3.4 Streaming: one relay loop over upstream events, its machines, SSE frames, the client watch ====

    /** Streams to the client: one loop (Relay.run), the machines it drives, the SSE writer and the watch on the client. */
    static final class Streaming {
        private Streaming() {}

        /**
         * A per-request machine from upstream items to the client's frames. The relay loop is the same for every
         * route; what an item means (finish, usage, errors, keep-alives) is the machine's business.
         */
        interface StreamMachine {
            /** Frames to send before the first upstream item. */
            default List<Frame> start() {
                return List.of();
            }

            List<Frame> onChunk(EventSource.Chunk chunk);

            /** The upstream ended: [DONE] (doneSeen) or the end of its body. */
            List<Frame> onEnd(boolean doneSeen);

            /** The upstream broke, went silent, the client left, or the proxy ended the stream. */
            List<Frame> onBroken(String message);

            boolean done();

            /** What keeps a silent stream alive: the API's ping, or a comment. */
            default Frame keepAlive() {
                return Frame.comment("keep-alive");
            }
        }

        /**
         * The one relay loop: items in, frames out as soon as the machine gives them, one flush per burst (when no
         * further item is waiting), nothing after the end, and the upstream cancelled when the client goes away.
         */
        static final class Relay {
            static void run(Context ctx, EventSource events, StreamMachine machine) {
                Exchange exchange = Exchange.of(ctx);
                SseWriter out = SseWriter.open(ctx);
                events.attach(out, machine::keepAlive);
                try {
                    write(out, machine.start(), exchange);
                    out.flush();
                    while (!machine.done()) {
                        EventSource.Item item = events.next();
                        if (item instanceof EventSource.Chunk c) write(out, machine.onChunk(c), exchange);
                        else if (item instanceof EventSource.End e) write(out, machine.onEnd(e.doneSeen()), exchange);
                        else if (item instanceof EventSource.Broken b) {
                            if (b.cause() instanceof ClientDisconnected) throw new SseWriter.ClientGone(b.cause());
                            write(out, machine.onBroken(brokenMessage(b.cause())), exchange);
                            if (b.cause() instanceof EndedByProxy) exchange.failed("ended: " + b.cause().getMessage());
                        }
                        if (machine.done() || !events.ready()) out.flush();
                    }
                } catch (SseWriter.ClientGone gone) {
                    exchange.note("client disconnected; upstream request cancelled");
                } finally {
                    // before the connection can carry the client's next request, which a probe must not read
                    out.stopWatching();
                }
            }

            /**
             * A whole answer (given as the stream it is equivalent to) through the machine its stream would use: the
             * same events and the same records, collected for a fold instead of written to the client.
             */
            static List<Frame> fold(EventSource events, StreamMachine machine) {
                List<Frame> out = new ArrayList<>(machine.start());
                while (!machine.done()) {
                    EventSource.Item item = events.next();
                    if (item instanceof EventSource.Chunk c) out.addAll(machine.onChunk(c));
                    else if (item instanceof EventSource.End e) out.addAll(machine.onEnd(e.doneSeen()));
                    else if (item instanceof EventSource.Broken b) out.addAll(machine.onBroken(brokenMessage(b.cause())));
                }
                return out;
            }

            private static void write(SseWriter out, List<Frame> frames, Exchange exchange) {
                if (!frames.isEmpty()) exchange.firstByte();
                for (Frame f : frames) {
                    if (f.failure() != null) exchange.failed(f.failure());
                    out.write(f);
                }
            }

            /** What the client is told when the upstream stream failed, or the proxy ended it. */
            static String brokenMessage(IOException failure) {
                if (failure instanceof EndedByProxy) return failure.getMessage();
                return "The Copilot stream broke: " + Http.brief(failure);
            }
        }

        /** The chat-chunk vocabulary every consumer of a chat stream shares: errors, finishes, usage, tool-call keys. */
        static final class ChatChunks {
            /** The error a chunk carries ({"error": "text"} or {"error": {"message": ...}}), if it is one. */
            static Optional<String> error(JsonNode chunk) {
                if (!chunk.has("error") || chunk.get("error").isNull()) return Optional.empty();
                return Optional.of(Errors.upstreamMessage(chunk, 500));
            }

            /**
             * A whole chat completion as the chunks it is equivalent to: per choice one chunk whose delta is its message
             * (text parts joined, each tool call indexed by its place) with its logprobs and finish_reason; then one chunk
             * with no choices for the usage and Copilot's cost figure, when the answer has them.
             */
            static List<ObjectNode> of(JsonNode completion) {
                List<ObjectNode> chunks = new ArrayList<>();
                int position = 0;
                for (JsonNode choice : completion.path("choices")) {
                    ObjectNode chunk = envelope(completion);
                    ObjectNode c = chunk.putArray("choices").addObject();
                    c.put("index", choice.path("index").asInt(position++));
                    c.set("delta", delta(choice.path("message")));
                    if (choice.path("logprobs").isObject()) c.set("logprobs", choice.get("logprobs"));
                    if (choice.path("finish_reason").isTextual()) c.set("finish_reason", choice.get("finish_reason"));
                    else c.putNull("finish_reason");
                    chunks.add(chunk);
                }
                if (completion.has("usage") || completion.has("copilot_usage")) {
                    ObjectNode last = envelope(completion);
                    last.putArray("choices");
                    if (completion.has("usage")) last.set("usage", completion.get("usage"));
                    if (completion.has("copilot_usage")) last.set("copilot_usage", completion.get("copilot_usage"));
                    chunks.add(last);
                }
                return chunks;
            }

            /**
             * Chat chunks folded into the completion they describe: per choice (by index) its deltas joined (text fields
             * appended, tool calls by their index, other fields kept), its logprobs lists joined, its finish_reason; and
             * the usage. An error chunk is the answer's failure: a 502.
             */
            static ObjectNode completion(List<Frame> frames) {
                ObjectNode head = Json.object();
                Map<Integer, ObjectNode> choices = new TreeMap<>();
                Map<Integer, Map<Integer, ObjectNode>> calls = new HashMap<>();
                JsonNode usage = null;
                JsonNode copilotUsage = null;
                for (Frame f : frames) {
                    JsonNode chunk = f.json();
                    if (chunk == null) continue;
                    Optional<String> error = error(chunk);
                    if (error.isPresent()) throw new ApiError(502, "api_error", error.get());
                    for (String field : List.of("id", "created", "model", "system_fingerprint")) {
                        if (!head.has(field) && chunk.hasNonNull(field)) head.set(field, chunk.get(field));
                    }
                    if (chunk.path("usage").isObject()) usage = chunk.get("usage");
                    if (chunk.path("copilot_usage").isObject()) copilotUsage = chunk.get("copilot_usage");
                    for (JsonNode c : chunk.path("choices")) {
                        int index = c.path("index").asInt(0);
                        ObjectNode choice = choices.computeIfAbsent(index, i -> emptyChoice(i));
                        ObjectNode message = (ObjectNode) choice.get("message");
                        c.path("delta").properties().forEach(d -> join(message, d.getKey(), d.getValue(), calls.computeIfAbsent(index, i -> new TreeMap<>())));
                        if (c.path("logprobs").isObject()) choice.set("logprobs", joinLogprobs(choice.get("logprobs"), c.get("logprobs")));
                        if (c.path("finish_reason").isTextual()) choice.set("finish_reason", c.get("finish_reason"));
                    }
                }
                ObjectNode out = Json.object();
                out.put("id", head.path("id").asText(""));
                out.put("object", "chat.completion");
                out.put("created", head.path("created").asLong(0));
                out.put("model", head.path("model").asText(""));
                if (head.has("system_fingerprint")) out.set("system_fingerprint", head.get("system_fingerprint"));
                ArrayNode list = out.putArray("choices");
                choices.forEach((index, choice) -> {
                    Map<Integer, ObjectNode> toolCalls = calls.getOrDefault(index, Map.of());
                    if (!toolCalls.isEmpty()) ((ObjectNode) choice.get("message")).putArray("tool_calls").addAll(toolCalls.values());
                    list.add(choice);
                });
                if (usage != null) out.set("usage", usage);
                if (copilotUsage != null) out.set("copilot_usage", copilotUsage);
                return out;
            }

            private static ObjectNode emptyChoice(int index) {
                ObjectNode choice = Json.object();
                choice.put("index", index);
                ObjectNode message = choice.putObject("message");
                message.put("role", "assistant");
                message.putNull("content");
                message.putNull("refusal");
                choice.putNull("logprobs");
                choice.putNull("finish_reason");
                return choice;
            }

            /** One delta field into the message: text appended, tool-call fragments joined by index, anything else kept. */
            private static void join(ObjectNode message, String field, JsonNode value, Map<Integer, ObjectNode> calls) {
                if (field.equals("role") || value.isNull()) return;
                if (field.equals("tool_calls")) {
                    for (JsonNode fragment : value) {
                        ObjectNode call = calls.computeIfAbsent(fragment.path("index").asInt(calls.size()), i -> Json.object());
                        fragment.properties().forEach(f -> {
                            if (f.getKey().equals("function")) {
                                ObjectNode fn = call.withObjectProperty("function");
                                f.getValue().properties().forEach(g -> join(fn, g.getKey(), g.getValue(), Map.of()));
                            } else if (!f.getKey().equals("index")) {
                                call.set(f.getKey(), f.getValue());
                            }
                        });
                    }
                } else if (value.isTextual()) {
                    message.put(field, message.path(field).asText("") + value.asText());
                } else {
                    message.set(field, value);
                }
            }

            /** The log probabilities of several chunks (or split choices), joined in order: each list concatenated. */
            private static JsonNode joinLogprobs(JsonNode sofar, JsonNode next) {
                if (!sofar.isObject()) return next.deepCopy();
                ObjectNode joined = (ObjectNode) sofar;
                next.properties().forEach(f -> {
                    if (f.getValue().isArray() && joined.path(f.getKey()).isArray()) ((ArrayNode) joined.get(f.getKey())).addAll((ArrayNode) f.getValue());
                    else if (!joined.hasNonNull(f.getKey())) joined.set(f.getKey(), f.getValue().deepCopy());
                });
                return joined;
            }

            private static ObjectNode envelope(JsonNode completion) {
                ObjectNode chunk = Json.object();
                for (String field : List.of("id", "created", "model")) if (completion.has(field)) chunk.set(field, completion.get(field));
                chunk.put("object", "chat.completion.chunk");
                return chunk;
            }

            /** A message as one delta: its fields but nulls, text parts joined, tool calls indexed by their place. */
            private static ObjectNode delta(JsonNode message) {
                ObjectNode delta = Json.object();
                message.properties().forEach(f -> {
                    if (!f.getValue().isNull() && !f.getKey().equals("tool_calls")) delta.set(f.getKey(), f.getValue());
                });
                if (message.path("content").isArray()) {
                    StringBuilder text = new StringBuilder();
                    for (JsonNode part : message.get("content")) if (part.path("type").asText("").equals("text")) text.append(part.path("text").asText(""));
                    delta.put("content", text.toString());
                }
                ArrayNode calls = Json.array();
                for (JsonNode call : message.path("tool_calls")) {
                    ObjectNode tc = calls.addObject();
                    tc.put("index", call.path("index").isIntegralNumber() ? call.get("index").asInt() : calls.size() - 1);
                    call.properties().forEach(f -> {
                        if (!f.getKey().equals("index")) tc.set(f.getKey(), f.getValue());
                    });
                }
                if (!calls.isEmpty()) delta.set("tool_calls", calls);
                return delta;
            }

            /** True when any choice of the chunk carries a finish_reason. */
            static boolean finishes(JsonNode chunk) {
                for (JsonNode c : chunk.path("choices")) if (c.path("finish_reason").isTextual()) return true;
                return false;
            }

            /**
             * Keys tool-call fragments the same way for every consumer. A fragment names its call by index, or by
             * id, or by neither (then it continues the choice's last call). A call that began without a usable index
             * (absent or null) adopts the first index a later fragment of it carries.
             */
            static final class ToolKeys {
                private final Map<String, String> byIndex = new HashMap<>();
                private final Map<String, String> byId = new HashMap<>();
                private final Map<Integer, String> last = new HashMap<>();
                private final Set<String> indexed = new java.util.HashSet<>();
                private int calls;

                String key(int choice, JsonNode fragment) {
                    Integer index = fragment.path("index").isIntegralNumber() ? fragment.path("index").asInt() : null;
                    String id = fragment.path("id").asText("");
                    String key = index != null ? byIndex.get(choice + ":" + index) : null;
                    if (key == null && !id.isEmpty()) key = byId.get(choice + ":" + id);
                    if (key == null && id.isEmpty()) {
                        String previous = last.get(choice);
                        if (index == null || (previous != null && !indexed.contains(previous))) key = previous;
                    }
                    if (key == null) key = choice + "#" + calls++;
                    if (index != null && indexed.add(key)) byIndex.putIfAbsent(choice + ":" + index, key);
                    if (!id.isEmpty()) byId.putIfAbsent(choice + ":" + id, key);
                    last.put(choice, key);
                    return key;
                }
            }
        }

        /** Chat chunks to an OpenAI chat client: normalised, and a chunk no rule changes goes out as Copilot's own text. */
        static final class ChatRelay implements StreamMachine {
            private final ChatStreamNormalizer normalizer;
            private final Exchange exchange;
            private boolean done;

            private final SubagentPrompts.ToolCallReader reader;

            ChatRelay(ChatStreamNormalizer normalizer, Exchange exchange, SubagentPrompts.ToolCallReader reader) {
                this.normalizer = normalizer;
                this.exchange = exchange;
                this.reader = reader;
            }

            @Override
            public List<Frame> onChunk(EventSource.Chunk chunk) {
                Optional<JsonNode> json = chunk.json();
                if (json.isEmpty()) {
                    Logs.log().warn("skipping an unreadable chunk from Copilot: {}", Redact.shorten(chunk.data()));
                    return List.of();
                }
                Requests.logBody("chat chunk", json.get());
                exchange.copilotUsage(json.get());
                Optional<String> error = ChatChunks.error(json.get());
                if (error.isPresent()) return end(Frame.data(Errors.openAiStreamError(error.get()), "upstream error in stream"));
                List<ObjectNode> out = normalizer.onChunk(json.get());
                out.forEach(reader::chatChunk);
                if (out.size() == 1 && out.get(0).equals(json.get())) return List.of(Frame.raw(chunk));
                List<Frame> frames = new ArrayList<>(out.size());
                for (ObjectNode c : out) frames.add(Frame.data(c, null));
                return frames;
            }

            @Override
            public List<Frame> onEnd(boolean doneSeen) {
                exchange.chatUsage(normalizer.usage());
                if (!doneSeen && !normalizer.finished()) {
                    return end(Frame.data(Errors.openAiStreamError("The Copilot stream ended before the answer was complete"), "upstream stream cut"));
                }
                List<Frame> frames = new ArrayList<>();
                for (ObjectNode c : normalizer.finish()) {
                    reader.chatChunk(c);
                    frames.add(Frame.data(c, null));
                }
                reader.chatEnd();
                frames.add(Frame.DONE);
                done = true;
                return frames;
            }

            @Override
            public List<Frame> onBroken(String message) {
                exchange.chatUsage(normalizer.usage());
                return end(Frame.data(Errors.openAiStreamError(message), "upstream stream broke"));
            }

            private List<Frame> end(Frame last) {
                done = true;
                return List.of(last);
            }

            @Override
            public boolean done() {
                return done;
            }
        }

        /**
         * Copilot's own named events passed on as they came (the native Messages and Responses routes): only the
         * events the route looks at are parsed (and written again if it changed them); the rest go out as Copilot's text.
         */
        static final class NativeRelay implements StreamMachine {
            /** What a route looks at on the way: it may change the event; the error event and the keep-alive are the API's. */
            interface Api {
                Set<String> inspected();

                void inspect(String name, ObjectNode data);

                /** True for an inspected event the client is not to see. */
                default boolean drops(String name, ObjectNode data) {
                    return false;
                }

                Set<String> terminal();

                ObjectNode error(String message, long sequence);

                Frame keepAlive();
            }

            private final Api api;
            private long sequence = -1;
            private boolean done;

            NativeRelay(Api api) {
                this.api = api;
            }

            @Override
            public List<Frame> onChunk(EventSource.Chunk chunk) {
                String name = chunk.event();
                if (name == null || api.inspected().contains(name)) {
                    Optional<JsonNode> json = chunk.json();
                    if (json.isEmpty() || !json.get().isObject()) return List.of();
                    ObjectNode data = (ObjectNode) json.get();
                    if (name == null) name = data.path("type").asText("");
                    sequence = data.path("sequence_number").asLong(sequence + 1);
                    api.inspect(name, data);
                    done = api.terminal().contains(name);
                    return api.drops(name, data) ? List.of() : List.of(new NamedEvent(name, data));
                }
                sequence++;
                done = api.terminal().contains(name);
                return List.of(Frame.raw(chunk));
            }

            @Override
            public List<Frame> onEnd(boolean doneSeen) {
                return onBroken("The Copilot stream ended before the answer was complete");
            }

            @Override
            public List<Frame> onBroken(String message) {
                done = true;
                return List.of(new NamedEvent("error", api.error(message, sequence + 1)));
            }

            @Override
            public boolean done() {
                return done;
            }

            @Override
            public Frame keepAlive() {
                return api.keepAlive();
            }
        }

        /** Chat chunks to another API through a translation machine; the chat vocabulary is read here, once. */
        static final class TranslatedRelay implements StreamMachine {
            /** A state machine from chat chunks to another API's events. */
            interface Translation {
                List<NamedEvent> start();

                List<NamedEvent> onChunk(JsonNode chunk);

                /** The upstream ended: [DONE], or the end of the body after a finish_reason. */
                List<NamedEvent> finish();

                List<NamedEvent> fail(String message);

                boolean done();

                /** The event that keeps a silent stream alive, or null for an SSE comment. */
                NamedEvent keepAlive();

                /** How an event is written: named (event: and data: lines) unless the API wants data lines only. */
                default Frame frame(NamedEvent e) {
                    return e;
                }
            }

            private final Translation machine;
            private final Exchange exchange;
            private final java.util.function.BiConsumer<String, JsonNode> observer;
            private boolean finishSeen;

            /** Every event the machine gives is also shown to the observer (name and data), on its way out. */
            TranslatedRelay(Translation machine, Exchange exchange, java.util.function.BiConsumer<String, JsonNode> observer) {
                this.machine = machine;
                this.exchange = exchange;
                this.observer = observer;
            }

            @Override
            public List<Frame> start() {
                return frames(machine.start());
            }

            @Override
            public List<Frame> onChunk(EventSource.Chunk chunk) {
                Optional<JsonNode> json = chunk.json();
                if (json.isEmpty()) return List.of();
                Requests.logBody("chat chunk", json.get());
                exchange.copilotUsage(json.get());
                Optional<String> error = ChatChunks.error(json.get());
                if (error.isPresent()) return frames(machine.fail(error.get()));
                exchange.chatUsage(json.get().path("usage"));
                finishSeen |= ChatChunks.finishes(json.get());
                return frames(machine.onChunk(json.get()));
            }

            @Override
            public List<Frame> onEnd(boolean doneSeen) {
                return frames(doneSeen || finishSeen ? machine.finish() : machine.fail("The Copilot stream ended before the answer was complete"));
            }

            @Override
            public List<Frame> onBroken(String message) {
                return frames(machine.fail(message));
            }

            @Override
            public boolean done() {
                return machine.done();
            }

            @Override
            public Frame keepAlive() {
                NamedEvent e = machine.keepAlive();
                return e != null ? e : Frame.comment("keep-alive");
            }

            private List<Frame> frames(List<NamedEvent> events) {
                List<Frame> frames = new ArrayList<>(events.size());
                for (NamedEvent e : events) {
                    observer.accept(e.name(), e.data());
                    frames.add(machine.frame(e));
                }
                return frames;
            }
        }

        /** One thing to send a stream's client; each knows its own text. */
        interface Frame {
            String sse();

            /** The request log's note when this frame ends the stream in failure, else null. */
            default String failure() {
                return null;
            }

            /** The event's name (null for a data-only event), for a fold that reads the frames instead of a client. */
            default String name() {
                return null;
            }

            /** The event's JSON, for a fold; null for a comment or [DONE]. */
            default JsonNode json() {
                return null;
            }

            Frame DONE = () -> "data: [DONE]\n\n";

            static Frame comment(String text) {
                return () -> ": " + text + "\n\n";
            }

            /** A data-only event (chat completions); failure names the request log's note when it is an error. */
            static Frame data(JsonNode json, String failure) {
                return new Frame() {
                    @Override
                    public String sse() {
                        return "data: " + Json.write(json) + "\n\n";
                    }

                    @Override
                    public String failure() {
                        return failure;
                    }

                    @Override
                    public JsonNode json() {
                        return json;
                    }
                };
            }

            /** An upstream event passed on as its own text, without parsing or writing it again (a fold reads its JSON). */
            static Frame raw(EventSource.Chunk chunk) {
                return new Frame() {
                    @Override
                    public String sse() {
                        String data = chunk.data();
                        StringBuilder b = new StringBuilder(data.length() + 32);
                        if (chunk.event() != null) b.append("event: ").append(chunk.event()).append('\n');
                        for (String line : data.split("\n", -1)) b.append("data: ").append(line).append('\n');
                        return b.append('\n').toString();
                    }

                    @Override
                    public String failure() {
                        return "error".equals(chunk.event()) ? "upstream error in stream" : null;
                    }

                    @Override
                    public String name() {
                        return chunk.event();
                    }

                    @Override
                    public JsonNode json() {
                        return chunk.json().orElse(null);
                    }
                };
            }
        }

        /**
         * Server-sent events to the client. The relay writes a burst and flushes once when nothing more is waiting;
         * the heartbeat's keep-alives take the lock only when it is free, so they never wait behind a slow client.
         */
        static final class SseWriter {
            /** The client went away; the caller stops and the upstream request is cancelled by closing it. */
            static final class ClientGone extends RuntimeException {
                ClientGone(IOException cause) {
                    super("client disconnected", cause, false, false);
                }
            }

            static final String KEY = "copilot-api.sse-writer";

            private final OutputStream out;
            private final ClientProbe client;
            private final java.util.concurrent.locks.ReentrantLock lock = new java.util.concurrent.locks.ReentrantLock();
            private volatile long lastWrite = System.nanoTime();

            private SseWriter(OutputStream out, ClientProbe client) {
                this.out = out;
                this.client = client;
            }

            /** The stream already opened for this request (committed early while Copilot was slow), or null. */
            static SseWriter existing(Context ctx) {
                return ctx.attribute(KEY);
            }

            /** Commits 200 and the event-stream headers, once per request. */
            static SseWriter open(Context ctx) {
                SseWriter opened = existing(ctx);
                if (opened != null) return opened;
                var res = ctx.res();
                res.setStatus(200);
                res.setContentType("text/event-stream; charset=utf-8");
                res.setHeader("Cache-Control", "no-cache");
                res.setHeader("X-Accel-Buffering", "no");
                try {
                    SseWriter w = new SseWriter(res.getOutputStream(), ClientProbe.of(ctx));
                    ctx.attribute(KEY, w);
                    res.flushBuffer();
                    return w;
                } catch (IOException e) {
                    throw new ClientGone(e);
                }
            }

            long lastWrite() {
                return lastWrite;
            }

            /** True once the client's connection has closed (looked at without writing to it). */
            boolean clientLeft() {
                return client.closed();
            }

            /** The stream is over: its connection is not looked at any more. */
            void stopWatching() {
                client.stop();
            }

            /** Writes without flushing; the relay flushes when no further event is waiting. */
            void write(Frame frame) {
                lock.lock();
                try {
                    out.write(frame.sse().getBytes(UTF_8));
                    lastWrite = System.nanoTime();
                } catch (IOException e) {
                    throw new ClientGone(e);
                } finally {
                    lock.unlock();
                }
            }

            void flush() {
                lock.lock();
                try {
                    out.flush();
                } catch (IOException e) {
                    throw new ClientGone(e);
                } finally {
                    lock.unlock();
                }
            }

            /** A keep-alive from the heartbeat: skipped when the relay is writing (the stream is not silent); false when the client is gone. */
            boolean tryWrite(Frame frame) {
                if (!lock.tryLock()) return true;
                try {
                    out.write(frame.sse().getBytes(UTF_8));
                    out.flush();
                    lastWrite = System.nanoTime();
                    return true;
                } catch (IOException e) {
                    return false;
                } finally {
                    lock.unlock();
                }
            }

            void data(JsonNode json) {
                send(Frame.data(json, null));
            }

            void event(String name, JsonNode json) {
                send(new NamedEvent(name, (ObjectNode) json));
            }

            void comment(String text) {
                send(Frame.comment(text));
            }

            /** Written and flushed at once. */
            void send(Frame frame) {
                write(frame);
                flush();
            }
        }

        /**
         * Looks at the client while Copilot has not answered. Jetty notices a closed connection only when it reads
         * or writes, and it does neither while a handler waits (tried: Request.addFailureListener does not fire, the
         * EndPoint stays open), so the watch reads the connection itself: end of input means the client left. An
         * HTTP/1.1 client waiting for its answer sends nothing more; a byte that does come (a pipelined request)
         * cannot be put back, so the probe stops and the connection closes after this answer. A stream is committed
         * after the early-commit delay (200, event-stream headers, a comment) and kept alive with comments; a
         * failed write there is a client that left too.
         */
        static final class ClientWatch implements Watch {
            private final Context ctx;
            private final Duration earlyCommit;
            private final Duration keepAlive;
            /** Looked up at the first wait: most requests are admitted and answered without waiting, and need no probe. */
            private ClientProbe client;
            private long lastWrite;

            ClientWatch(Context ctx, Duration earlyCommit, Duration keepAlive) {
                this.ctx = ctx;
                this.earlyCommit = earlyCommit;
                this.keepAlive = keepAlive;
            }

            @Override
            public boolean waiting(Duration waited, boolean stream) {
                try {
                    if (clientClosed()) return gone();
                    if (stream && waited.compareTo(earlyCommit) >= 0) keepAlive();
                    return true;
                } catch (SseWriter.ClientGone e) {
                    return gone();
                }
            }

            private boolean gone() {
                Exchange.of(ctx).note("client disconnected; upstream request cancelled");
                return false;
            }

            private boolean clientClosed() {
                if (client == null) client = ClientProbe.of(ctx);
                boolean closed = client.closed();
                if (client.ateAByte() && !ctx.res().isCommitted()) ctx.header("Connection", "close");
                return closed;
            }

            private void keepAlive() {
                SseWriter out = SseWriter.existing(ctx);
                if (out == null) {
                    SseWriter.open(ctx).comment("waiting for Copilot");
                    lastWrite = System.nanoTime();
                } else if (System.nanoTime() - lastWrite >= keepAlive.toNanos()) {
                    out.comment("keep-alive");
                    lastWrite = System.nanoTime();
                }
            }
        }

        /**
         * Reads the client's connection without waiting: end of input (or a reset) means the client left. One per
         * request, shared by the wait for Copilot's headers and the heartbeat of a running stream. A byte that does
         * come (a pipelined request) cannot be put back: probing stops then, and the wait for Copilot's headers asks
         * for the connection to close after this answer.
         */
        static final class ClientProbe {
            static final String KEY = "copilot-api.client-probe";
            private volatile org.eclipse.jetty.io.EndPoint endPoint;
            private volatile boolean ate;
            private volatile boolean closed;

            private ClientProbe(org.eclipse.jetty.io.EndPoint endPoint) {
                this.endPoint = endPoint;
            }

            static ClientProbe of(Context ctx) {
                ClientProbe p = ctx.attribute(KEY);
                if (p == null) {
                    var core = org.eclipse.jetty.ee10.servlet.ServletContextRequest.getServletContextRequest(ctx.req());
                    p = new ClientProbe(core == null ? null : core.getConnectionMetaData().getConnection().getEndPoint());
                    ctx.attribute(KEY, p);
                }
                return p;
            }

            synchronized boolean closed() {
                org.eclipse.jetty.io.EndPoint e = endPoint;
                if (closed || e == null) return closed;
                try {
                    int read = e.fill(org.eclipse.jetty.util.BufferUtil.allocate(1));
                    if (read > 0) {
                        ate = true;
                        endPoint = null;
                    }
                    closed = read < 0;
                } catch (IOException ex) {
                    closed = true;
                }
                return closed;
            }

            boolean ateAByte() {
                return ate;
            }

            /** No probe from now on (one running now has finished when this returns). */
            synchronized void stop() {
                endPoint = null;
            }
        }
    }

    // ==== 3.5 Error shapes: each API's error bodies, Copilot's error hints ====

    /** Failures as each caller's API writes them. */
    static final class ErrorShapes {
        private ErrorShapes() {}

        /** Error shapes: one writer per API surface, chosen by the path. */
        static final class Errors {
            static final String WRITTEN = "copilot-api.error-written";

            enum Shape { OPENAI, ANTHROPIC, GEMINI }

            static Shape shapeFor(Context ctx) {
                String path = ctx.path();
                if (path.startsWith("/v1/messages") || path.startsWith("/messages")) return Shape.ANTHROPIC;
                return GeminiRoutes.serves(ctx) ? Shape.GEMINI : Shape.OPENAI;
            }

            static void handle(Exception e, Context ctx) {
                if (e instanceof ClientLeft gone) {
                    Exchange.of(ctx).note(gone.getMessage());
                    // nginx's "client closed request": in the history a request nobody was there to take is not a 200
                    if (!ctx.res().isCommitted()) ctx.status(499);
                    return;
                }
                ApiError error = toApiError(e);
                boolean upstream = e instanceof UpstreamException || e instanceof UpstreamUnreachable || e instanceof UserFacingException;
                Exchange.of(ctx).error(error.getMessage(), upstream || error.status() >= 500).errorType = error.type();
                SseWriter stream = SseWriter.existing(ctx);
                if (stream != null) {
                    writeStreamError(ctx, stream, error);
                } else if (ctx.res().isCommitted()) {
                    Logs.log().warn("{} {} failed after the response started: {}", ctx.method(), ctx.path(), error.getMessage());
                } else {
                    write(ctx, error);
                }
            }

            /** A stream committed early (Copilot was slow) whose call then failed: the API's error event, then the end. */
            static void writeStreamError(Context ctx, SseWriter out, ApiError e) {
                String message = "HTTP " + e.status() + ": " + e.getMessage();
                Exchange.of(ctx).failed("failed before Copilot's first byte: HTTP " + e.status());
                try {
                    Shape shape = shapeFor(ctx);
                    if (shape == Shape.ANTHROPIC) out.event("error", AnthropicEvents.error(anthropicTypeFor(e.status()), message));
                    else if (shape == Shape.GEMINI) out.data(googleBody(e));
                    else if (ctx.path().endsWith(ResponsesRoutes.RESPONSES)) out.event("error", responsesStreamError(message, 0));
                    else out.data(openAiBody(new ApiError(e.status(), e.type(), message, e.param(), e.code())));
                } catch (SseWriter.ClientGone gone) {
                    Exchange.of(ctx).note("client disconnected");
                }
            }

            /** The Responses API's error event. */
            static ObjectNode responsesStreamError(String message, long sequence) {
                ObjectNode error = Json.object();
                error.put("type", "error");
                error.put("code", "upstream_stream_error");
                error.put("message", message);
                error.putNull("param");
                error.put("sequence_number", sequence);
                return error;
            }

            static ApiError toApiError(Throwable e) {
                if (e instanceof ApiError a) return a;
                if (e instanceof UpstreamException u) return fromUpstream(u);
                if (e instanceof UpstreamTimeout u) return new ApiError(504, "api_error", u.getMessage());
                if (e instanceof UpstreamUnreachable u) return new ApiError(502, "api_error", u.getMessage());
                if (e instanceof StoreFailing f) return new ApiError(503, "api_error", f.getMessage());
                if (e instanceof CatalogUnavailable c) return catalogFailure(c.reason());
                if (e instanceof TokenExchangeLimited t) {
                    ApiError a = new ApiError(429, "rate_limit_error", t.getMessage());
                    t.retryAfter().ifPresent(d -> a.headers().put("retry-after", String.valueOf(d.plusMillis(999).toSeconds())));
                    return a;
                }
                if (e instanceof UserFacingException u) return new ApiError(502, "api_error", u.getMessage());
                Logs.log().error("unexpected failure", e);
                return new ApiError(500, "api_error", "Internal error in copilot-api: " + describe(e));
            }

            /**
             * Keeps the upstream status, wording, code and retry-after, and adds what the error means for the user.
             * A 401 that survived the token refresh is Copilot refusing copilot-api, not the client's key: a 502, so
             * that no SDK reports "your API key is wrong".
             */
            static ApiError fromUpstream(UpstreamException u) {
                Optional<JsonNode> json = Json.tryParse(u.body());
                String message = json.map(j -> upstreamMessage(j, u.status())).orElseGet(() ->
                    u.body().isBlank() ? "Copilot answered HTTP " + u.status() : Redact.shorten(u.body().strip()));
                JsonNode err = json.map(j -> j.path("error")).orElse(Json.object());
                String code = err.path("code").isTextual() ? err.path("code").asText() : null;
                String param = err.path("param").isTextual() ? err.path("param").asText() : null;
                Optional<String> hint = CopilotHints.hint(u.status(), code, message);
                if (hint.isPresent()) message = message + " (copilot-api: " + hint.get() + ")";
                if (u.status() == 401) return new ApiError(502, "api_error", message, null, code != null ? code : "copilot_unauthorized");
                String type = err.path("type").isTextual() ? err.path("type").asText() : typeFor(u.status());
                ApiError a = new ApiError(u.status(), type, message, param, code);
                Optional<String> retryAfter = u.retryAfter().isPresent() || u.status() != 429 ? u.retryAfter() : retryAfterIn(a.getMessage());
                retryAfter.ifPresent(r -> a.headers().put("retry-after", r));
                return a;
            }

            /**
             * The catalog a request needed could not be read: said as the model list's failure, so that nobody takes it
             * for the model's. Copilot's refusals keep their meaning (402, 403, 429 with its retry-after; a 401 that
             * survived the token refresh is a 502, as on every call); any other answer is a bad gateway (502), and no
             * answer in time a 504.
             */
            static ApiError catalogFailure(RuntimeException cause) {
                if (cause instanceof UpstreamException u) {
                    ApiError a = fromUpstream(u);
                    boolean kept = a.status() == 402 || a.status() == 403 || a.status() == 429;
                    ApiError e = new ApiError(kept ? a.status() : 502, kept ? a.type() : "api_error",
                        "Copilot's model list answered " + u.status() + ": " + a.getMessage(), null, a.code());
                    e.headers().putAll(a.headers());
                    return e;
                }
                ApiError a = toApiError(cause);
                // copilot-api stopping (503) says so itself; an internal error stays one
                if (cause instanceof ApiError || a.status() == 500) return a;
                String what = cause instanceof UpstreamTimeout ? "did not answer in time"
                    : cause instanceof UpstreamUnreachable ? "could not be reached" : "could not be read";
                ApiError e = new ApiError(a.status(), a.type(), "Copilot's model list " + what + ": " + a.getMessage(), a.param(), a.code());
                e.headers().putAll(a.headers());
                return e;
            }

            private static final Pattern RETRY_AFTER_TEXT = Pattern.compile("retry after (\\d+) seconds?", Pattern.CASE_INSENSITIVE);

            /** The session and weekly limits put the wait only in their text: "... Please retry after 2733 seconds. (...)". */
            static Optional<String> retryAfterIn(String message) {
                java.util.regex.Matcher m = RETRY_AFTER_TEXT.matcher(message);
                return m.find() ? Optional.of(m.group(1)) : Optional.empty();
            }

            static String upstreamMessage(JsonNode j, int status) {
                JsonNode err = j.path("error");
                if (err.isTextual()) return err.asText();
                if (err.path("message").isTextual()) return err.path("message").asText();
                if (j.path("message").isTextual()) return j.path("message").asText();
                return "Copilot answered HTTP " + status + ": " + Redact.shorten(Json.write(j));
            }

            static String typeFor(int status) {
                return switch (status) {
                    case 400, 413, 422 -> "invalid_request_error";
                    case 401 -> "authentication_error";
                    case 402, 403 -> "permission_error";
                    case 404 -> "not_found_error";
                    case 429 -> "rate_limit_error";
                    default -> "api_error";
                };
            }

            static String anthropicTypeFor(int status) {
                return switch (status) {
                    case 400, 415, 422 -> "invalid_request_error";
                    case 401 -> "authentication_error";
                    case 402, 403 -> "permission_error";
                    case 404 -> "not_found_error";
                    case 413 -> "request_too_large";
                    case 429 -> "rate_limit_error";
                    case 529, 503 -> "overloaded_error";
                    case 504 -> "timeout_error";
                    default -> "api_error";
                };
            }

            static void write(Context ctx, ApiError e) {
                ctx.attribute(WRITTEN, true);
                ctx.status(e.status());
                e.headers().forEach(ctx::header);
                ObjectNode body = switch (shapeFor(ctx)) {
                    case ANTHROPIC -> anthropicBody(e);
                    case GEMINI -> googleBody(e);
                    case OPENAI -> openAiBody(e);
                };
                ctx.contentType("application/json").result(Json.write(body));
            }

            static ObjectNode googleBody(ApiError e) {
                return GoogleErrors.body(e.status(), e.getMessage(), e.headers().get("retry-after"));
            }

            static ObjectNode openAiBody(ApiError e) {
                ObjectNode o = Json.object();
                ObjectNode err = o.putObject("error");
                err.put("message", e.getMessage());
                err.put("type", e.type());
                err.put("param", e.param());
                err.put("code", e.code());
                return o;
            }

            static ObjectNode anthropicBody(ApiError e) {
                ObjectNode o = Json.object();
                o.put("type", "error");
                ObjectNode err = o.putObject("error");
                err.put("type", anthropicTypeFor(e.status()));
                err.put("message", e.getMessage());
                return o;
            }

            static ObjectNode openAiStreamError(String message) {
                return openAiBody(new ApiError(502, "api_error", message));
            }
        }

        /** What Copilot's errors mean for the person at the keyboard, and the one thing to do about each. */
        static final class CopilotHints {
            static Optional<String> hint(int status, String code, String message) {
                String m = message == null ? "" : message.toLowerCase(Locale.ROOT);
                if (status == 466) {
                    return Optional.of("Copilot finds the editor version copilot-api sends too old; set COPILOT_API_COPILOT_CHAT_VERSION "
                        + "(and COPILOT_API_VSCODE_VERSION) to current Copilot Chat and VS Code versions");
                }
                if (status == 421) {
                    return Optional.of("this account's Copilot API is on another host; start with the right --account-type "
                        + "(individual, business, enterprise) or set COPILOT_API_COPILOT_URL");
                }
                if (status == 402 || "quota_exceeded".equals(code)) {
                    return Optional.of("the Copilot quota is used up until it resets (copilot-api check-usage shows the date); "
                        + "models included in the plan may still work");
                }
                if (status == 401) {
                    return Optional.of("Copilot refused copilot-api's Copilot token even after a refresh; check that this GitHub account "
                        + "still has Copilot (copilot-api check-usage)");
                }
                if ("model_not_supported".equals(code) || m.contains("model is not supported")) {
                    return Optional.of("this model is not enabled for the account; enable it in GitHub's Copilot settings or pick one "
                        + "from GET /v1/models");
                }
                if (m.contains("vision") && !m.contains("copilot-vision-request") && (status == 400 || status == 403)) {
                    return Optional.of("images are turned off for this account or by its organisation's Copilot policy");
                }
                if (status == 403) {
                    return Optional.of("Copilot refused this request; the account or its organisation's policy may not allow this "
                        + "model or feature");
                }
                return Optional.empty();
            }
        }
    }

    // ==== 4. Store and history ====

    /**
     * One embedded SQLite database in the data directory: the Responses API's stored responses and items, and one
     * history row per request. Reads run on the request's thread; every write goes through one writer thread with a
     * bounded queue, so a stream never waits on the disk. A failing database is logged once, reported by /stats, and
     * answered 503 to a request that needs what is stored; the proxy keeps serving everything else. The writer thread also opens the database, as its first task, so
     * that start-up does not wait for SQLite (unpacking and loading its native library, the check and the migrations
     * took 0.1-0.2 s); the server lets it begin once Jetty listens.
     */
    static final class Store implements AutoCloseable {
        static final String FILE_NAME = "store.db";
        /** Writes waiting for the writer; past this they are dropped (and counted) rather than held in memory. */
        static final int MAX_QUEUED_WRITES = 10_000;
        static final Duration PRUNE_EVERY = Duration.ofHours(1);

        /** What the operator chose: where, whether, for how long, and whether bodies go into the history. */
        record Options(boolean enabled, Optional<Path> path, Duration maxAge, long maxBytes, boolean historyBodies) {
            static final Duration DEFAULT_MAX_AGE = Duration.ofDays(30);
            static final long DEFAULT_MAX_BYTES = 512L * 1024 * 1024;
            static final Options DEFAULT = new Options(true, Optional.empty(), DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, false);
            static final Options OFF = new Options(false, Optional.empty(), DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, false);

            Path file(Path dataDir) {
                return path.orElse(dataDir.resolve(FILE_NAME)).toAbsolutePath();
            }
        }

        /** One stored Responses answer: the response object as the client got it and its own input items, resolved. */
        record StoredResponse(String id, long createdAt, String previousId, ObjectNode response, ArrayNode input) {
        }

        private final Options options;
        private final Path file;
        private final Health health = new Health();
        /** Null when the store is off; otherwise created at once, and its first task opens the database. */
        private final Writer writer;
        /** Completes when the opening has finished: with the reader's connection, or null when off or failed to open. */
        private final java.util.concurrent.CompletableFuture<Connection> reader = new java.util.concurrent.CompletableFuture<>();
        /** One read at a time on the reader's connection; a lock, not synchronized, so that waiting does not pin a virtual thread. */
        private final java.util.concurrent.locks.ReentrantLock reading = new java.util.concurrent.locks.ReentrantLock();
        /** True once the opening may begin; false when the store is closed before it ever began. */
        private final java.util.concurrent.CompletableFuture<Boolean> go = new java.util.concurrent.CompletableFuture<>();
        /** Answers queued for the writer; a next turn that follows at once finds them here. */
        private final Map<String, StoredResponse> pendingResponses = new java.util.concurrent.ConcurrentHashMap<>();
        private final Map<String, JsonNode> pendingItems = new java.util.concurrent.ConcurrentHashMap<>();

        private Store(Options options, Path file) {
            this.options = options;
            this.file = file;
            this.writer = file == null ? null : new Writer(health);
        }

        /**
         * A store whose writer thread opens (or creates) the database once {@link #beginOpening} is called, and
         * returns at once: meanwhile writes queue behind the opening, reads and {@link #status} wait for it. A
         * corrupt file is moved aside, any other failure leaves a store that keeps nothing and whose reads fail.
         */
        static Store unopened(Options options, Path dataDir) {
            if (!options.enabled()) {
                Store off = new Store(options, null);
                off.reader.complete(null);
                return off;
            }
            Store store = new Store(options, options.file(dataDir));
            store.writer.first(() -> {
                if (store.go.join()) store.openOnWriter();
                else store.reader.complete(null);
            });
            return store;
        }

        /** Lets the writer thread open the database. */
        void beginOpening() {
            go.complete(true);
        }

        /** The writer thread's first task: both connections, or the failure recorded and a store that keeps nothing. */
        private void openOnWriter() {
            Connection read = null;
            try {
                try {
                    read = connect();
                } catch (SQLException e) {
                    if (!Db.corrupt(e)) throw e;
                    Path aside = Db.moveAside(file);
                    Logs.log().warn("the store {} is corrupt ({}); moved it to {} and started a new one", file, describe(e), aside);
                    read = connect();
                }
                writer.every(PRUNE_EVERY, this::prune);
            } catch (SQLException | RuntimeException e) {
                health.failed("cannot open " + file, e);
            } finally {
                reader.complete(read);
            }
        }

        /** Creates, checks and migrates the file with the writer's connection; returns a second one for reads. */
        private Connection connect() throws SQLException {
            Db.create(file);
            Connection writes = Db.connect(file);
            try {
                Db.check(writes);
                Db.migrate(writes);
                Connection read = Db.connect(file);
                writer.connected(writes);
                return read;
            } catch (SQLException e) {
                Db.closeQuietly(writes);
                throw e;
            }
        }

        /** True once the opening has finished without a database: writes and reads are skipped, as with the store off. */
        private boolean unavailable() {
            return writer == null || reader.isDone() && reader.join() == null;
        }

        /** What `debug` says about the default store file, read-only: there, its size, and whether SQLite can read it. */
        static ObjectNode probe(Path file) {
            ObjectNode o = Json.object().put("path", file.toString()).put("exists", Files.isRegularFile(file));
            if (!Files.isRegularFile(file)) return o;
            try (Connection c = DriverManager.getConnection("jdbc:sqlite:file:" + file + "?mode=ro")) {
                o.put("bytes", Files.size(file));
                Db.check(c);
                try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("PRAGMA user_version")) {
                    o.put("schemaVersion", r.next() ? r.getInt(1) : 0);
                }
                o.put("state", "ok");
            } catch (SQLException | IOException e) {
                o.put("state", e instanceof SQLException q && Db.corrupt(q) ? "corrupt (moved aside at the next start)" : "failing");
                o.put("error", describe(e));
            }
            return o;
        }

        /** True when Responses answers are kept (the store is on, even if its disk is failing). */
        boolean enabled() {
            return options.enabled();
        }

        boolean historyBodies() {
            return options.historyBodies();
        }

        Optional<Path> file() {
            return Optional.ofNullable(file);
        }

        // -- stored responses

        void saveResponse(StoredResponse r) {
            if (!enabled()) return;
            pendingResponses.put(r.id(), r);
            List<JsonNode> items = new ArrayList<>();
            r.input().forEach(items::add);
            r.response().path("output").forEach(items::add);
            for (JsonNode item : items) if (item.path("id").isTextual()) pendingItems.put(item.path("id").asText(), item);
            write("save response " + r.id(), c -> Db.insertResponse(c, r), () -> {
                pendingResponses.remove(r.id(), r);
                for (JsonNode item : items) if (item.path("id").isTextual()) pendingItems.remove(item.path("id").asText(), item);
            });
        }

        Optional<StoredResponse> response(String id) {
            StoredResponse pending = pendingResponses.get(id);
            if (pending != null) return Optional.of(pending);
            return read(c -> Db.response(c, id, cutoff()));
        }

        Optional<JsonNode> item(String id) {
            JsonNode pending = pendingItems.get(id);
            if (pending != null) return Optional.of(pending);
            return read(c -> Db.item(c, id, cutoff()));
        }

        /** Deletes at once (the client's next GET must 404): the one write the caller waits for. */
        boolean deleteResponse(String id) {
            boolean pending = pendingResponses.remove(id) != null;
            if (writer == null) return pending;
            boolean deleted = writer.await(c -> Db.deleteResponse(c, id)).orElseThrow(() ->
                failing("deleting " + id + " did not complete"));
            return pending || deleted;
        }

        // -- history

        void saveHistory(HistoryRow row) {
            if (enabled()) write("history row", c -> Db.insertHistory(c, row), () -> { });
        }

        Optional<List<HistoryRow>> history(History.Query q) {
            return read(c -> Optional.of(Db.history(c, q)));
        }

        /** The dashboard's view of the history since then, counted by SQLite: no row is loaded for it but the latest failures. */
        Optional<History.Summary> historySummary(long since) {
            return read(c -> Optional.of(Db.summary(c, since)));
        }

        /** The AI Credits the history holds since this time; empty when the store is off or cannot answer. */
        Optional<Double> creditsSince(long since) {
            try {
                return read(c -> Optional.of(Db.creditsSince(c, since)));
            } catch (StoreFailing e) {
                return Optional.empty();
            }
        }

        /** The same from a store file, read-only, for check-usage (a server may hold the file open); empty if unreadable. */
        static Optional<Double> creditsSince(Path file, long since) {
            if (!Files.isRegularFile(file)) return Optional.empty();
            try (Connection c = DriverManager.getConnection("jdbc:sqlite:file:" + file + "?mode=ro")) {
                return Optional.of(Db.creditsSince(c, since));
            } catch (SQLException e) {
                Logs.log().debug("reading credits from {}: {}", file, describe(e));
                return Optional.empty();
            }
        }

        // -- upkeep and state

        private long cutoff() {
            return Instant.now().minus(options.maxAge()).toEpochMilli();
        }

        private void prune() {
            if (writer == null || writer.connection() == null) return;
            try {
                Db.prune(writer.connection(), cutoff(), options.maxBytes());
                health.ok();
            } catch (SQLException e) {
                health.failed("pruning " + file, e);
            }
        }

        /** What /stats and the dashboard say about the store. */
        ObjectNode status() {
            ObjectNode o = Json.object();
            o.put("enabled", enabled());
            if (file != null) o.put("path", file.toString());
            if (!enabled()) {
                o.put("state", "off");
                return o;
            }
            reader.join();
            health.report(o);
            o.put("dropped_writes", writer == null ? 0 : writer.dropped());
            try {
                if (file != null && Files.exists(file)) o.put("bytes", Files.size(file));
            } catch (IOException e) {
                o.put("bytes_error", describe(e));
            }
            o.put("max_age_days", options.maxAge().toDays());
            o.put("max_bytes", options.maxBytes());
            o.put("history_bodies", options.historyBodies());
            return o;
        }

        @Override
        public void close() {
            go.complete(false);
            if (writer != null) writer.close();
            Db.closeQuietly(reader.getNow(null));
        }

        private void write(String what, Db.Write w, Runnable after) {
            if (unavailable()) {
                after.run();
                return;
            }
            writer.submit(what, w, after);
        }

        /** Empty when the store is off; a store that is on but cannot be read throws {@link StoreFailing}, never empty. */
        private <T> Optional<T> read(Db.Read<T> r) {
            Connection reader = this.reader.join();
            if (reader == null) {
                if (enabled()) throw failing("it could not be opened");
                return Optional.empty();
            }
            reading.lock();
            try {
                Optional<T> out = r.run(reader);
                return out;
            } catch (SQLException e) {
                health.failed("reading " + file, e);
                throw failing("reading: " + describe(e));
            } finally {
                reading.unlock();
            }
        }

        /** What a client is told when the store cannot answer: a 503 naming the cause, never a "not found". */
        private static StoreFailing failing(String cause) {
            return new StoreFailing("the store is failing (" + Redact.shorten(cause) + "); copilot-api keeps serving without it, see /stats");
        }

        /** The store's state: the first failure of a run of failures is logged, and a recovery once. */
        static final class Health {
            private String error;
            private long failures;
            private Instant since;

            synchronized void failed(String what, Exception e) {
                failures++;
                if (error == null) {
                    error = what + ": " + describe(e);
                    since = Instant.now();
                    Logs.log().warn("store failing, copilot-api keeps serving without it: {}", error);
                }
            }

            synchronized void ok() {
                if (error == null) return;
                Logs.log().info("store working again after {} failure(s)", failures);
                error = null;
            }

            synchronized void report(ObjectNode o) {
                o.put("state", error == null ? "ok" : "failing");
                o.put("failures", failures);
                if (error != null) {
                    o.put("error", Redact.shorten(error));
                    o.put("failing_since", since.toString());
                }
            }
        }

        /** The one thread that writes: a bounded queue in front, each write in its own transaction. */
        static final class Writer {
            /** Set by the opening, the thread's first task; null until then, and for good when the opening failed. */
            private Connection connection;
            private final Health health;
            private final java.util.concurrent.ScheduledThreadPoolExecutor thread;
            private final java.util.concurrent.atomic.AtomicInteger queued = new java.util.concurrent.atomic.AtomicInteger();
            private final java.util.concurrent.atomic.AtomicLong dropped = new java.util.concurrent.atomic.AtomicLong();
            private final java.util.concurrent.ConcurrentLinkedQueue<Pending> pending = new java.util.concurrent.ConcurrentLinkedQueue<>();
            /** A drain is scheduled and has not started taking the queue yet. */
            private final java.util.concurrent.atomic.AtomicBoolean draining = new java.util.concurrent.atomic.AtomicBoolean();

            Writer(Health health) {
                this.health = health;
                this.thread = new java.util.concurrent.ScheduledThreadPoolExecutor(1, r -> {
                    Thread t = new Thread(r, "copilot-api-store");
                    t.setDaemon(true);
                    return t;
                });
            }

            /** Runs the opening before anything else that is submitted. */
            void first(Runnable opening) {
                thread.execute(opening);
            }

            /** Called on the writer thread, by the opening. */
            void connected(Connection c) {
                connection = c;
            }

            Connection connection() {
                return connection;
            }

            long dropped() {
                return dropped.get();
            }

            void submit(String what, Db.Write w, Runnable after) {
                if (queued.incrementAndGet() > MAX_QUEUED_WRITES) {
                    queued.decrementAndGet();
                    if (dropped.getAndIncrement() == 0) Logs.log().warn("store writes are falling behind; dropping {} and later ones", what);
                    after.run();
                    return;
                }
                pending.add(new Pending(what, w, after));
                if (!draining.compareAndSet(false, true)) return;
                try {
                    thread.execute(this::drain);
                } catch (java.util.concurrent.RejectedExecutionException closed) {
                    draining.set(false);
                    for (Pending p; (p = pending.poll()) != null; ) done(p);
                }
            }

            private record Pending(String what, Db.Write w, Runnable after) {}

            /**
             * Runs every write queued so far in one transaction: under load one commit (and one WAL append) serves many
             * requests, where a commit each was a fifth of a small request's CPU. A failed batch is retried write by
             * write, so that the one that fails is the one reported.
             */
            private void drain() {
                draining.set(false);
                List<Pending> batch = new ArrayList<>();
                for (Pending p; (p = pending.poll()) != null; ) batch.add(p);
                if (batch.isEmpty()) return;
                try {
                    if (connection == null) return;
                    if (batch.size() == 1) {
                        run(batch.get(0).what(), batch.get(0).w());
                        return;
                    }
                    try {
                        Db.inTransaction(connection, c -> {
                            for (Pending p : batch) p.w().run(c);
                            return null;
                        });
                        health.ok();
                    } catch (SQLException | RuntimeException e) {
                        for (Pending p : batch) run(p.what(), p.w());
                    }
                } finally {
                    for (Pending p : batch) done(p);
                }
            }

            private void done(Pending p) {
                queued.decrementAndGet();
                p.after().run();
            }

            /** Runs a write and waits for it (DELETE, which the client reads back at once). */
            <T> Optional<T> await(Db.Query<T> q) {
                try {
                    return thread.submit(() -> {
                        if (connection == null) return Optional.<T>empty();
                        try {
                            T out = Db.inTransaction(connection, q);
                            health.ok();
                            return Optional.ofNullable(out);
                        } catch (SQLException e) {
                            health.failed("writing", e);
                            return Optional.<T>empty();
                        }
                    }).get(30, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return Optional.empty();
                } catch (java.util.concurrent.ExecutionException | java.util.concurrent.TimeoutException
                    | java.util.concurrent.RejectedExecutionException e) {
                    health.failed("writing", e);
                    return Optional.empty();
                }
            }

            void every(Duration period, Runnable task) {
                thread.scheduleWithFixedDelay(task, 0, period.toMillis(), TimeUnit.MILLISECONDS);
            }

            private void run(String what, Db.Write w) {
                if (connection == null) return;
                try {
                    Db.inTransaction(connection, c -> {
                        w.run(c);
                        return null;
                    });
                    health.ok();
                } catch (SQLException | RuntimeException e) {
                    health.failed(what, e);
                }
            }

            /** Finishes the queued writes (up to 10 s), then closes the connection. */
            void close() {
                thread.setContinueExistingPeriodicTasksAfterShutdownPolicy(false);
                thread.shutdown();
                try {
                    if (!thread.awaitTermination(10, TimeUnit.SECONDS)) Logs.log().warn("store: {} writes not finished at exit", queued.get());
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
                Db.closeQuietly(connection);
            }
        }

        /** The SQL: schema migrations, and one method per statement. */
        static final class Db {
            interface Write {
                void run(Connection c) throws SQLException;
            }

            interface Read<T> {
                Optional<T> run(Connection c) throws SQLException;
            }

            interface Query<T> {
                T run(Connection c) throws SQLException;
            }

            /** Schema versions in order; PRAGMA user_version says how many have run. Never edit one, add the next. */
            static final List<List<String>> MIGRATIONS = List.of(
                List.of(
                    "CREATE TABLE responses (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, previous_id TEXT,"
                        + " response TEXT NOT NULL, input TEXT NOT NULL, bytes INTEGER NOT NULL)",
                    "CREATE INDEX responses_created ON responses (created_at)",
                    "CREATE TABLE items (id TEXT PRIMARY KEY, response_id TEXT NOT NULL, created_at INTEGER NOT NULL, item TEXT NOT NULL)",
                    "CREATE INDEX items_response ON items (response_id)",
                    "CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, api TEXT, method TEXT NOT NULL,"
                        + " path TEXT NOT NULL, requested_model TEXT, upstream_model TEXT, route TEXT, status INTEGER NOT NULL,"
                        + " error_type TEXT, error_message TEXT, first_byte_ms INTEGER, total_ms INTEGER NOT NULL, input_tokens INTEGER,"
                        + " output_tokens INTEGER, cached_tokens INTEGER, user_agent TEXT, initiator TEXT, premium_cost REAL,"
                        + " request_body TEXT, response_body TEXT)",
                    "CREATE INDEX history_at ON history (at)"),
                List.of(
                    "ALTER TABLE history ADD COLUMN credits REAL",
                    "ALTER TABLE history ADD COLUMN credits_estimated INTEGER"));

            /** A new file is made 0600 before SQLite sees it; SQLite gives its -wal and -shm files the same mode. */
            static void create(Path file) throws SQLException {
                try {
                    Path dir = file.getParent();
                    if (!Files.isDirectory(dir)) {
                        Files.createDirectories(dir);
                        Posix.restrict(dir, "rwx------");
                    }
                    if (!Files.exists(file)) {
                        Files.createFile(file);
                        Posix.restrict(file, "rw-------");
                    }
                } catch (IOException e) {
                    throw new SQLException("cannot create " + file + ": " + describe(e), e);
                }
            }

            static Connection connect(Path file) throws SQLException {
                Connection c = DriverManager.getConnection("jdbc:sqlite:" + file);
                try (Statement s = c.createStatement()) {
                    s.execute("PRAGMA busy_timeout = 5000");
                }
                return c;
            }

            /** A file that is not a database, or fails SQLite's quick check, is corrupt. */
            static void check(Connection c) throws SQLException {
                try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("PRAGMA quick_check")) {
                    String result = r.next() ? r.getString(1) : "no answer";
                    if (!result.equals("ok")) throw new SQLException("quick_check: " + result, null, SQLITE_CORRUPT);
                }
            }

            static final int SQLITE_CORRUPT = 11;
            static final int SQLITE_NOTADB = 26;

            static boolean corrupt(SQLException e) {
                int code = e.getErrorCode() & 0xff;
                return code == SQLITE_CORRUPT || code == SQLITE_NOTADB;
            }

            static Path moveAside(Path file) {
                String stamp = java.time.format.DateTimeFormatter.ofPattern("yyyyMMdd-HHmmss").withZone(ZoneOffset.UTC).format(Instant.now());
                Path aside = file.resolveSibling(file.getFileName() + ".corrupt-" + stamp);
                try {
                    Files.move(file, aside);
                    for (String suffix : List.of("-wal", "-shm")) Files.deleteIfExists(file.resolveSibling(file.getFileName() + suffix));
                } catch (IOException e) {
                    throw new UncheckedIOException("cannot move the corrupt store " + file + " aside", e);
                }
                return aside;
            }

            static void migrate(Connection c) throws SQLException {
                try (Statement s = c.createStatement()) {
                    s.execute("PRAGMA journal_mode = WAL");
                    s.execute("PRAGMA synchronous = NORMAL");
                }
                int version;
                try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("PRAGMA user_version")) {
                    version = r.next() ? r.getInt(1) : 0;
                }
                if (version > MIGRATIONS.size()) {
                    throw new SQLException("the store has schema version " + version + ", newer than this copilot-api knows ("
                        + MIGRATIONS.size() + "); use a newer copilot-api or another --store");
                }
                for (int v = version; v < MIGRATIONS.size(); v++) {
                    int next = v + 1;
                    inTransaction(c, tx -> {
                        try (Statement s = tx.createStatement()) {
                            for (String sql : MIGRATIONS.get(next - 1)) s.execute(sql);
                            s.execute("PRAGMA user_version = " + next);
                        }
                        return null;
                    });
                }
            }

            static <T> T inTransaction(Connection c, Query<T> q) throws SQLException {
                c.setAutoCommit(false);
                try {
                    T out = q.run(c);
                    c.commit();
                    return out;
                } catch (SQLException | RuntimeException e) {
                    try {
                        c.rollback();
                    } catch (SQLException rollback) {
                        e.addSuppressed(rollback);
                    }
                    throw e;
                } finally {
                    c.setAutoCommit(true);
                }
            }

            static void closeQuietly(Connection c) {
                if (c == null) return;
                try {
                    c.close();
                } catch (SQLException e) {
                    Logs.log().debug("closing the store: {}", describe(e));
                }
            }

            static void insertResponse(Connection c, StoredResponse r) throws SQLException {
                String response = Json.write(r.response());
                String input = Json.write(r.input());
                try (PreparedStatement s = c.prepareStatement("INSERT OR REPLACE INTO responses (id, created_at, previous_id, response, input, bytes)"
                    + " VALUES (?, ?, ?, ?, ?, ?)")) {
                    s.setString(1, r.id());
                    s.setLong(2, r.createdAt());
                    s.setString(3, r.previousId());
                    s.setString(4, response);
                    s.setString(5, input);
                    s.setLong(6, response.length() + input.length());
                    s.executeUpdate();
                }
                try (PreparedStatement s = c.prepareStatement("INSERT OR REPLACE INTO items (id, response_id, created_at, item) VALUES (?, ?, ?, ?)")) {
                    List<JsonNode> items = new ArrayList<>();
                    r.input().forEach(items::add);
                    r.response().path("output").forEach(items::add);
                    for (JsonNode item : items) {
                        if (!item.path("id").isTextual()) continue;
                        s.setString(1, item.path("id").asText());
                        s.setString(2, r.id());
                        s.setLong(3, r.createdAt());
                        s.setString(4, Json.write(item));
                        s.addBatch();
                    }
                    s.executeBatch();
                }
            }

            static Optional<StoredResponse> response(Connection c, String id, long cutoff) throws SQLException {
                try (PreparedStatement s = c.prepareStatement("SELECT created_at, previous_id, response, input FROM responses WHERE id = ? AND created_at >= ?")) {
                    s.setString(1, id);
                    s.setLong(2, cutoff);
                    try (ResultSet r = s.executeQuery()) {
                        if (!r.next()) return Optional.empty();
                        return Optional.of(new StoredResponse(id, r.getLong(1), r.getString(2),
                            (ObjectNode) parse(r.getString(3)), (ArrayNode) parse(r.getString(4))));
                    }
                }
            }

            static Optional<JsonNode> item(Connection c, String id, long cutoff) throws SQLException {
                try (PreparedStatement s = c.prepareStatement("SELECT item FROM items WHERE id = ? AND created_at >= ?")) {
                    s.setString(1, id);
                    s.setLong(2, cutoff);
                    try (ResultSet r = s.executeQuery()) {
                        return r.next() ? Optional.of(parse(r.getString(1))) : Optional.empty();
                    }
                }
            }

            static boolean deleteResponse(Connection c, String id) throws SQLException {
                try (PreparedStatement items = c.prepareStatement("DELETE FROM items WHERE response_id = ?");
                     PreparedStatement response = c.prepareStatement("DELETE FROM responses WHERE id = ?")) {
                    items.setString(1, id);
                    items.executeUpdate();
                    response.setString(1, id);
                    return response.executeUpdate() > 0;
                }
            }

            static final String INSERT_HISTORY = "INSERT INTO history (at, api, method, path, requested_model, upstream_model,"
                + " route, status, error_type, error_message, first_byte_ms, total_ms, input_tokens, output_tokens, cached_tokens,"
                + " user_agent, initiator, premium_cost, request_body, response_body, credits, credits_estimated)"
                + " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
            /**
             * The history insert, prepared once per connection (only the writer's thread inserts): preparing it was a
             * third of the insert's cost, run once per request. Closed with its connection.
             */
            private static final Map<Connection, PreparedStatement> HISTORY_INSERTS = java.util.Collections.synchronizedMap(new java.util.WeakHashMap<>());

            static void insertHistory(Connection c, HistoryRow h) throws SQLException {
                PreparedStatement s = HISTORY_INSERTS.get(c);
                if (s == null || s.isClosed()) {
                    s = c.prepareStatement(INSERT_HISTORY);
                    HISTORY_INSERTS.put(c, s);
                }
                try {
                    s.setLong(1, h.at());
                    s.setString(2, h.api());
                    s.setString(3, h.method());
                    s.setString(4, h.path());
                    s.setString(5, h.requestedModel());
                    s.setString(6, h.upstreamModel());
                    s.setString(7, h.route());
                    s.setInt(8, h.status());
                    s.setString(9, h.errorType());
                    s.setString(10, h.errorMessage());
                    setLong(s, 11, h.firstByteMs());
                    s.setLong(12, h.totalMs());
                    setLong(s, 13, h.inputTokens());
                    setLong(s, 14, h.outputTokens());
                    setLong(s, 15, h.cachedTokens());
                    s.setString(16, h.userAgent());
                    s.setString(17, h.initiator());
                    if (h.premiumCost() == null) s.setNull(18, java.sql.Types.REAL);
                    else s.setDouble(18, h.premiumCost());
                    s.setString(19, h.requestBody());
                    s.setString(20, h.responseBody());
                    if (h.credits() == null) s.setNull(21, java.sql.Types.REAL);
                    else s.setDouble(21, h.credits());
                    if (h.creditsEstimated() == null) s.setNull(22, java.sql.Types.INTEGER);
                    else s.setInt(22, h.creditsEstimated() ? 1 : 0);
                    s.executeUpdate();
                    s.clearParameters();
                } catch (SQLException e) {
                    HISTORY_INSERTS.remove(c);
                    s.close();
                    throw e;
                }
            }

            private static void setLong(PreparedStatement s, int i, Long v) throws SQLException {
                if (v == null) s.setNull(i, java.sql.Types.INTEGER);
                else s.setLong(i, v);
            }

            /** A history row's columns but its bodies. */
            static final String HISTORY_COLUMNS = "id, at, api, method, path, requested_model, upstream_model, route, status,"
                + " error_type, error_message, first_byte_ms, total_ms, input_tokens, output_tokens, cached_tokens, user_agent, initiator,"
                + " premium_cost, credits, credits_estimated";

            static List<HistoryRow> history(Connection c, History.Query q) throws SQLException {
                StringBuilder sql = new StringBuilder("SELECT " + HISTORY_COLUMNS + ", request_body, response_body FROM history WHERE 1 = 1");
                List<Object> args = new ArrayList<>();
                q.before().ifPresent(v -> { sql.append(" AND id < ?"); args.add(v); });
                q.model().ifPresent(v -> { sql.append(" AND (requested_model = ? OR upstream_model = ?)"); args.add(v); args.add(v); });
                q.route().ifPresent(v -> { sql.append(" AND route = ?"); args.add(v); });
                q.since().ifPresent(v -> { sql.append(" AND at >= ?"); args.add(v); });
                q.until().ifPresent(v -> { sql.append(" AND at < ?"); args.add(v); });
                q.status().ifPresent(v -> {
                    if (v.equals("error")) sql.append(" AND (status >= 400 OR error_type IS NOT NULL)");
                    else if (v.equals("ok")) sql.append(" AND status < 400 AND error_type IS NULL");
                    else { sql.append(" AND status = ?"); args.add(Integer.parseInt(v)); }
                });
                sql.append(" ORDER BY id DESC LIMIT ?");
                args.add(q.limit() + 1);
                try (PreparedStatement s = c.prepareStatement(sql.toString())) {
                    for (int i = 0; i < args.size(); i++) s.setObject(i + 1, args.get(i));
                    List<HistoryRow> rows = new ArrayList<>();
                    try (ResultSet r = s.executeQuery()) {
                        while (r.next()) rows.add(HistoryRow.from(r));
                    }
                    return rows;
                }
            }

            /** The model a row is counted under, and what makes a row a failure, as the summary's SQL says them. */
            static final String MODEL = "COALESCE(upstream_model, requested_model)";
            static final String FAILED = "(status >= 400 OR error_type IS NOT NULL)";

            /**
             * The history since then, aggregated by SQLite over the index on {@code at}: per day, per model (the busiest
             * {@link History#SUMMARY_MODELS}), nearest-rank p50/p95, and the latest failures without their bodies (by
             * {@code at}, so that a week without failures does not scan the older history). What Java holds is the answer,
             * never the rows; only the week's rows are read, and no body column.
             */
            static double creditsSince(Connection c, long since) throws SQLException {
                try (PreparedStatement s = c.prepareStatement("SELECT COALESCE(SUM(credits), 0) FROM history WHERE at >= ?")) {
                    s.setLong(1, since);
                    try (ResultSet r = s.executeQuery()) {
                        return r.next() ? r.getDouble(1) : 0;
                    }
                }
            }

            static History.Summary summary(Connection c, long since) throws SQLException {
                List<History.Day> days = new ArrayList<>();
                try (PreparedStatement s = c.prepareStatement("SELECT date(at / 1000, 'unixepoch') AS day, COUNT(*), SUM(" + FAILED + "),"
                    + " COALESCE(SUM(credits), 0) FROM history WHERE at >= ? GROUP BY day ORDER BY day DESC")) {
                    s.setLong(1, since);
                    try (ResultSet r = s.executeQuery()) {
                        while (r.next()) days.add(new History.Day(r.getString(1), r.getLong(2), r.getLong(3), r.getDouble(4)));
                    }
                }
                Map<String, History.Latency> latencies = latencies(c, since, MODEL, MODEL + " IS NOT NULL");
                List<History.ModelWeek> models = new ArrayList<>();
                try (PreparedStatement s = c.prepareStatement("SELECT " + MODEL + " AS model, SUM(" + FAILED + "), COALESCE(SUM(input_tokens), 0),"
                    + " COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(credits), 0)"
                    + " FROM history WHERE at >= ? AND " + MODEL + " IS NOT NULL"
                    + " GROUP BY model ORDER BY COUNT(*) DESC, model LIMIT ?")) {
                    s.setLong(1, since);
                    s.setInt(2, History.SUMMARY_MODELS);
                    try (ResultSet r = s.executeQuery()) {
                        while (r.next()) {
                            models.add(new History.ModelWeek(r.getString(1), latencies.get(r.getString(1)), r.getLong(2), r.getLong(3), r.getLong(4),
                                r.getLong(5), r.getDouble(6)));
                        }
                    }
                }
                History.Latency all = latencies(c, since, "''", "requested_model IS NOT NULL").getOrDefault("", History.Latency.NONE);
                List<HistoryRow> failures = new ArrayList<>();
                try (PreparedStatement s = c.prepareStatement("SELECT " + HISTORY_COLUMNS + ", NULL AS request_body, NULL AS response_body"
                    + " FROM history WHERE at >= ? AND " + FAILED + " ORDER BY at DESC, id DESC LIMIT ?")) {
                    s.setLong(1, since);
                    s.setInt(2, History.SUMMARY_FAILURES);
                    try (ResultSet r = s.executeQuery()) {
                        while (r.next()) failures.add(HistoryRow.from(r));
                    }
                }
                return new History.Summary(all, days, models, failures);
            }

            /**
             * Requests and nearest-rank p50/p95 of total_ms per key: the window functions number each key's rows by
             * time taken, and only the two rows at ranks ceil(n / 2) and ceil(n * 0.95) come back.
             */
            private static Map<String, History.Latency> latencies(Connection c, long since, String key, String where) throws SQLException {
                Map<String, History.Latency> out = new HashMap<>();
                try (PreparedStatement s = c.prepareStatement("SELECT k, total_ms, rn, n FROM (SELECT " + key + " AS k, total_ms,"
                    + " ROW_NUMBER() OVER (PARTITION BY " + key + " ORDER BY total_ms) AS rn, COUNT(*) OVER (PARTITION BY " + key + ") AS n"
                    + " FROM history WHERE at >= ? AND " + where + ") WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 95 + 99) / 100")) {
                    s.setLong(1, since);
                    try (ResultSet r = s.executeQuery()) {
                        while (r.next()) {
                            long n = r.getLong(4);
                            long rank = r.getLong(3);
                            long ms = r.getLong(2);
                            History.Latency l = out.getOrDefault(r.getString(1), new History.Latency(n, null, null));
                            out.put(r.getString(1), new History.Latency(n, rank == (n * 50 + 99) / 100 ? Long.valueOf(ms) : l.p50(),
                                rank == (n * 95 + 99) / 100 ? Long.valueOf(ms) : l.p95()));
                        }
                    }
                }
                return out;
            }

            /**
             * Older than the age limit goes; then, while the file is over the size limit, the oldest go: the share of
             * rows by which the file is too large (a tenth at least, nine tenths at most, a little more for slack).
             */
            static void prune(Connection c, long cutoff, long maxBytes) throws SQLException {
                inTransaction(c, tx -> {
                    for (String table : List.of("responses WHERE created_at", "items WHERE created_at", "history WHERE at")) {
                        try (PreparedStatement s = tx.prepareStatement("DELETE FROM " + table + " < ?")) {
                            s.setLong(1, cutoff);
                            s.executeUpdate();
                        }
                    }
                    return null;
                });
                for (int round = 0; round < 10 && bytes(c) > maxBytes; round++) {
                    double share = Math.min(0.9, Math.max(0.1, 1 - (double) maxBytes / bytes(c) + 0.05));
                    String limit = String.format(Locale.ROOT, "(SELECT CAST(COUNT(*) * %.3f AS INTEGER) + 1 FROM ", share);
                    inTransaction(c, tx -> {
                        try (Statement s = tx.createStatement()) {
                            s.execute("DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created_at LIMIT " + limit + "responses))");
                            s.execute("DELETE FROM items WHERE response_id NOT IN (SELECT id FROM responses)");
                            s.execute("DELETE FROM history WHERE id IN (SELECT id FROM history ORDER BY id LIMIT " + limit + "history))");
                        }
                        return null;
                    });
                    // SQLite refuses to VACUUM while a prepared statement is open on the connection
                    PreparedStatement cached = HISTORY_INSERTS.remove(c);
                    if (cached != null) cached.close();
                    try (Statement s = c.createStatement()) {
                        s.execute("VACUUM");
                    }
                }
            }

            private static long bytes(Connection c) throws SQLException {
                try (Statement s = c.createStatement();
                     ResultSet r = s.executeQuery("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")) {
                    return r.next() ? r.getLong(1) : 0;
                }
            }

            private static JsonNode parse(String text) throws SQLException {
                return Json.tryParse(text).orElseThrow(() -> new SQLException("a stored row is not JSON", null, SQLITE_CORRUPT));
            }
        }
    }

    /** The request history: one row per request from its Exchange, and GET /history to read them back. */
    static final class History {
        /** Operator views the dashboard polls: a row each would bury the requests that matter (their failures still get one). */
        static final Set<String> QUIET = Set.of("/", "/dashboard", "/favicon.ico", "/stats", "/history", "/history/summary", "/usage",
            "/token", "/models", "/v1/models", "/v1beta/models");

        /** GET /history's filters: newest first, {@code before} a row id for the next page. */
        record Query(int limit, Optional<Long> before, Optional<String> model, Optional<String> status, Optional<String> route,
            Optional<Long> since, Optional<Long> until) {
            static final int DEFAULT_LIMIT = 50;
            static final int MAX_LIMIT = 500;

            static Query from(Context ctx) {
                String status = ctx.queryParam("status");
                if (status != null && !status.matches("ok|error|\\d{3}")) throw Requests.invalid("status", "is ok, error or an HTTP status such as 429");
                return new Query(Requests.queryInt(ctx, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
                    Optional.ofNullable(ctx.queryParam("before")).map(b -> Requests.queryLong(ctx, "before", 1, Long.MAX_VALUE)),
                    Optional.ofNullable(ctx.queryParam("model")), Optional.ofNullable(status), Optional.ofNullable(ctx.queryParam("route")),
                    time(ctx, "since"), time(ctx, "until"));
            }

            /** An ISO-8601 instant (2026-01-31T12:00:00Z) or epoch milliseconds; one a long cannot hold is refused like a typo. */
            private static Optional<Long> time(Context ctx, String name) {
                String v = ctx.queryParam(name);
                if (v == null) return Optional.empty();
                try {
                    return Optional.of(v.matches("\\d+") ? Long.parseLong(v) : Instant.parse(v).toEpochMilli());
                } catch (java.time.format.DateTimeParseException | NumberFormatException | ArithmeticException e) {
                    throw Requests.invalid(name, "is an ISO-8601 time such as 2026-01-31T12:00:00Z, or epoch milliseconds");
                }
            }
        }

        /** The route a background call is kept under, whichever way it went to Copilot: /history?route=background lists them. */
        static final String BACKGROUND_ROUTE = "background";

        static void record(Context ctx, int status, long millis, Store store) {
            if (!store.enabled() || (QUIET.contains(ctx.path()) && status < 400) || ctx.method() == io.javalin.http.HandlerType.OPTIONS) return;
            Exchange e = Exchange.of(ctx);
            boolean failed = status >= 400 || e.failedInStream;
            Long firstByte = e.firstByteNanos > 0 && e.startedNanos > 0 ? (e.firstByteNanos - e.startedNanos) / 1_000_000 : null;
            String requestBody = store.historyBodies() && ctx.method() == io.javalin.http.HandlerType.POST ? Redact.secrets(new String(Optional.ofNullable(e.requestBody).orElse(new byte[0]), UTF_8)) : null;
            String responseBody = store.historyBodies() ? Redact.secrets(e.responseBody) : null;
            store.saveHistory(new HistoryRow(null, System.currentTimeMillis() - millis, api(ctx.path()), ctx.method().name(), ctx.path(),
                e.requestedModel, e.upstreamModel, e.background != null ? BACKGROUND_ROUTE : e.route, status, failed ? Optional.ofNullable(e.errorType).orElse(e.failedInStream ? "stream_error" : "error") : null,
                failed ? Redact.secrets(Optional.ofNullable(e.error).orElse(e.note)) : null, firstByte, millis, known(e.inputTokens), known(e.outputTokens),
                known(e.cachedTokens), ctx.header("user-agent"), e.charge == null ? null : e.charge.initiator().wire(),
                e.charge == null ? null : e.charge.units(), requestBody, responseBody,
                e.cost == null ? null : e.cost.map(Cost.Figure::credits).orElse(null),
                e.cost == null ? null : e.cost.map(Cost.Figure::estimated).orElse(null)));
        }

        private static Long known(long tokens) {
            return tokens >= 0 ? tokens : null;
        }

        /** Which API a path belongs to. */
        static String api(String path) {
            String p = path.startsWith("/v1/") ? path.substring(3) : path;
            if (path.startsWith("/v1beta/") || (p.startsWith("/models/") && p.contains(":"))) return "gemini";
            if (p.startsWith("/chat/completions")) return "openai.chat";
            if (p.startsWith("/responses")) return "openai.responses";
            if (p.startsWith("/embeddings")) return "openai.embeddings";
            if (p.startsWith("/models")) return "openai.models";
            if (p.startsWith("/messages")) return "anthropic.messages";
            return "copilot-api";
        }

        static final int SUMMARY_DAYS = 7;
        /** The summary names the busiest models up to this many, and this many of the latest failures. */
        static final int SUMMARY_MODELS = 50;
        static final int SUMMARY_FAILURES = 10;

        /** How many requests took how long, by nearest rank; null percentiles when there were none. */
        record Latency(long requests, Long p50, Long p95) {
            static final Latency NONE = new Latency(0, null, null);

            ObjectNode json() {
                ObjectNode o = Json.object().put("requests", requests);
                o.put("p50_ms", p50);
                o.put("p95_ms", p95);
                return o;
            }
        }

        record Day(String day, long requests, long errors, double credits) {
        }

        record ModelWeek(String model, Latency latency, long errors, long inputTokens, long outputTokens, long cachedTokens, double credits) {
        }

        /** The dashboard's week, as {@link Store.Db#summary} counts it. */
        record Summary(Latency all, List<Day> days, List<ModelWeek> models, List<HistoryRow> recentErrors) {
            static final Summary NONE = new Summary(Latency.NONE, List.of(), List.of(), List.of());
        }

        /**
         * GET /history/summary, for the dashboard: the last week's requests per day and per model with p50/p95
         * latency, the latest failures, the store's and the Copilot token's state. A store that cannot be read
         * answers {@code available: false} beside its state, so that the page still says why.
         */
        static void summary(Context ctx, Store store, CopilotClient copilot) {
            ObjectNode out = Json.object();
            out.set("store", store.status());
            out.set("copilot_token", tokenState(copilot));
            long since = Instant.now().minus(Duration.ofDays(SUMMARY_DAYS)).toEpochMilli();
            Optional<Summary> week;
            try {
                week = store.historySummary(since);
            } catch (StoreFailing e) {
                week = Optional.empty();
            }
            out.put("days", SUMMARY_DAYS);
            out.put("available", week.isPresent());
            Summary s = week.orElse(Summary.NONE);
            out.set("latency", s.all().json());
            ArrayNode days = out.putArray("per_day");
            for (Day d : s.days()) {
                days.addObject().put("day", d.day()).put("requests", d.requests()).put("errors", d.errors()).put("credits", d.credits());
            }
            ArrayNode models = out.putArray("per_model");
            for (ModelWeek m : s.models()) {
                models.add(m.latency().json().put("model", m.model()).put("errors", m.errors()).put("input_tokens", m.inputTokens())
                    .put("output_tokens", m.outputTokens()).put("cached_tokens", m.cachedTokens()).put("credits", m.credits()));
            }
            ArrayNode errors = out.putArray("recent_errors");
            for (HistoryRow r : s.recentErrors()) errors.add(r.json());
            Requests.writeJson(ctx, out);
        }

        /** The Copilot token's state, never the token. */
        static ObjectNode tokenState(CopilotClient copilot) {
            ObjectNode o = Json.object();
            try {
                CopilotToken t = copilot.tokens().current();
                long now = Instant.now().getEpochSecond();
                o.put("state", t.expiresAt() > now ? "valid" : "expired");
                o.put("expires_at", Instant.ofEpochSecond(t.expiresAt()).toString());
                o.put("expires_in_seconds", t.expiresAt() - now);
                o.put("api", Http.shown(copilot.baseUrl()));
            } catch (RuntimeException e) {
                o.put("state", "unavailable");
                o.put("error", Redact.shorten(describe(e)));
            }
            return o;
        }

        static void list(Context ctx, Store store) {
            if (!store.enabled()) throw new ApiError(404, "not_found_error", "copilot-api runs with --no-store and keeps no history");
            Query q = Query.from(ctx);
            List<HistoryRow> rows = store.history(q).orElseThrow(() -> new ApiError(503, "api_error",
                "the store cannot be read; see /stats for its error"));
            boolean more = rows.size() > q.limit();
            ObjectNode out = Json.object().put("object", "list");
            ArrayNode data = out.putArray("data");
            for (HistoryRow r : rows.subList(0, Math.min(rows.size(), q.limit()))) data.add(r.json());
            out.put("has_more", more);
            if (more) out.put("next_before", rows.get(q.limit() - 1).id());
            else out.putNull("next_before");
            Requests.writeJson(ctx, out);
        }
    }

    /**
     * One row of the request history; initiator and premium cost stay null until the ledger fills them, credits (AI
     * Credits, estimated or Copilot's figure) stay null on a legacy plan and for a failed call.
     */
    record HistoryRow(Long id, long at, String api, String method, String path, String requestedModel, String upstreamModel, String route,
        int status, String errorType, String errorMessage, Long firstByteMs, long totalMs, Long inputTokens, Long outputTokens,
        Long cachedTokens, String userAgent, String initiator, Double premiumCost, String requestBody, String responseBody,
        Double credits, Boolean creditsEstimated) {

        HistoryRow(Long id, long at, String api, String method, String path, String requestedModel, String upstreamModel, String route,
            int status, String errorType, String errorMessage, Long firstByteMs, long totalMs, Long inputTokens, Long outputTokens,
            Long cachedTokens, String userAgent, String initiator, Double premiumCost, String requestBody, String responseBody) {
            this(id, at, api, method, path, requestedModel, upstreamModel, route, status, errorType, errorMessage, firstByteMs, totalMs,
                inputTokens, outputTokens, cachedTokens, userAgent, initiator, premiumCost, requestBody, responseBody, null, null);
        }

        static HistoryRow from(ResultSet r) throws SQLException {
            return new HistoryRow(r.getLong("id"), r.getLong("at"), r.getString("api"), r.getString("method"), r.getString("path"),
                r.getString("requested_model"), r.getString("upstream_model"), r.getString("route"), r.getInt("status"),
                r.getString("error_type"), r.getString("error_message"), nullableLong(r, "first_byte_ms"), r.getLong("total_ms"),
                nullableLong(r, "input_tokens"), nullableLong(r, "output_tokens"), nullableLong(r, "cached_tokens"),
                r.getString("user_agent"), r.getString("initiator"), nullableDouble(r, "premium_cost"), r.getString("request_body"),
                r.getString("response_body"), nullableDouble(r, "credits"),
                Optional.ofNullable(nullableLong(r, "credits_estimated")).map(v -> v != 0).orElse(null));
        }

        private static Long nullableLong(ResultSet r, String column) throws SQLException {
            long v = r.getLong(column);
            return r.wasNull() ? null : v;
        }

        private static Double nullableDouble(ResultSet r, String column) throws SQLException {
            double v = r.getDouble(column);
            return r.wasNull() ? null : v;
        }

        ObjectNode json() {
            ObjectNode o = Json.object();
            o.put("id", id);
            o.put("time", Instant.ofEpochMilli(at).toString());
            o.put("api", api);
            o.put("method", method);
            o.put("path", path);
            o.put("requested_model", requestedModel);
            o.put("upstream_model", upstreamModel);
            o.put("route", route);
            o.put("status", status);
            o.put("error_type", errorType);
            o.put("error_message", errorMessage);
            o.put("first_byte_ms", firstByteMs);
            o.put("total_ms", totalMs);
            o.put("input_tokens", inputTokens);
            o.put("output_tokens", outputTokens);
            o.put("cached_tokens", cachedTokens);
            o.put("user_agent", userAgent);
            o.put("initiator", initiator);
            o.put("premium_cost", premiumCost);
            o.put("credits", credits);
            o.put("credits_estimated", creditsEstimated);
            if (requestBody != null) o.put("request_body", requestBody);
            if (responseBody != null) o.put("response_body", responseBody);
            return o;
        }
    }

    // ==== 5. Translators ====
    // Pure code in one namespace per API: Chat (the pivot), Anthropic, Responses and Gemini.

    // ==== 5.1 Chat: who initiated a turn and which calls are background work, the chat normaliser, model limits, embeddings ====

    /** Chat completions, the pivot every other API is translated to, and what all of them share. */
    static final class Chat {
        private Chat() {
        }


        /** Who started a turn, for Copilot's billing: a user prompt costs a premium request, agent follow-ups do not. */
        enum Initiator {
            USER, AGENT;

            String wire() {
                return name().toLowerCase(Locale.ROOT);
            }

            /** agent for a continuation (tool results, reminders, an assistant turn), user for a person's prompt. */
            static Initiator of(JsonNode messages) {
                return Turn.ofMessages(messages).initiator();
            }
        }

        /**
         * What the last message of a conversation is, for billing: a person's prompt (the text they typed), a
         * continuation (tool results, reminders, notifications, an assistant turn), Claude Code's warm-up probe, or
         * (told by {@link BackgroundCalls} from the whole request) another background call. A part this code does
         * not know counts as the person's: where the rule cannot tell, the call bills.
         * {@code textLast} says what Copilot sees, whoever wrote it: the last message is a user message with no tool
         * result (Copilot refuses X-Initiator agent there, whether a person or the editor wrote the text).
         */
        record Turn(Kind kind, String personText, boolean opensConversation, boolean textLast) {
            /** A person's prompt, a continuation, or a background call no person typed (see {@link BackgroundCalls}). */
            enum Kind {
                PROMPT, CONTINUATION, WARMUP, TITLE, COMPACTION, SIDE_CALL;

                boolean background() {
                    return this != PROMPT && this != CONTINUATION;
                }

                String label() {
                    return name().toLowerCase(Locale.ROOT).replace('_', ' ');
                }
            }

            static final String REMINDER_OPEN = "<system-reminder>";
            private static final java.util.regex.Pattern REMINDER =
                java.util.regex.Pattern.compile("<system-reminder>.*?</system-reminder>", java.util.regex.Pattern.DOTALL);

            Initiator initiator() {
                return kind == Kind.PROMPT ? Initiator.USER : Initiator.AGENT;
            }

            /** This turn told apart as a background call: no person's prompt, whatever its last message looks like. */
            Turn as(Kind background) {
                return new Turn(background, null, opensConversation, textLast);
            }

            static Turn prompt(String personText, boolean opens) {
                return new Turn(Kind.PROMPT, personText, opens, true);
            }

            static Turn continuation(boolean textLast) {
                return new Turn(Kind.CONTINUATION, null, false, textLast);
            }

            /** Text wholly made of {@code <system-reminder>} blocks (and white space): the editor speaking, not a person. */
            static boolean isReminder(String text) {
                return text.contains(REMINDER_OPEN) && REMINDER.matcher(text).replaceAll("").isBlank();
            }

            /** Anthropic Messages or chat-completions messages. */
            static Turn ofMessages(JsonNode messages) {
                if (messages == null || !messages.isArray() || messages.isEmpty()) return prompt(null, true);
                if (isWarmup(messages)) return new Turn(Kind.WARMUP, "Warmup", true, true);
                JsonNode last = messages.get(messages.size() - 1);
                String role = last.path("role").asText("");
                if (role.equals("assistant") || role.equals("tool")) return continuation(false);
                boolean opens = true;
                for (JsonNode m : messages) opens &= !m.path("role").asText("").equals("assistant");
                if (!role.equals("user")) return prompt(null, opens);
                return ofContent(last.path("content"), opens);
            }

            /** The Responses API: a string is a prompt; of input items, only a user message can be one. */
            static Turn ofResponsesInput(JsonNode input, boolean continuesAResponse) {
                if (input == null || input.isTextual()) return prompt(input == null ? null : input.asText(), !continuesAResponse);
                if (!input.isArray() || input.isEmpty()) return prompt(null, !continuesAResponse);
                JsonNode last = input.get(input.size() - 1);
                String type = last.path("type").asText("message");
                if (!type.equals("message")) return continuation(false);
                String role = last.path("role").asText("user");
                if (role.equals("assistant")) return continuation(false);
                boolean opens = !continuesAResponse;
                for (JsonNode item : input) {
                    String t = item.path("type").asText("message");
                    opens &= t.equals("message") && !item.path("role").asText("user").equals("assistant");
                }
                if (!role.equals("user")) return prompt(null, opens);
                return ofContent(last.path("content"), opens);
            }

            /** A user message's content: a prompt when any part is not a tool result nor a reminder; the last such text is kept. */
            private static Turn ofContent(JsonNode content, boolean opens) {
                if (content.isTextual()) {
                    return isReminder(content.asText()) ? new Turn(Kind.CONTINUATION, null, opens, true) : prompt(content.asText(), opens);
                }
                if (!content.isArray() || content.isEmpty()) return prompt(null, opens);
                boolean person = false, toolResult = false;
                String text = null;
                for (JsonNode part : content) {
                    String type = part.path("type").asText("");
                    if (type.equals("tool_result") || type.equals("function_call_output")) {
                        toolResult = true;
                        continue;
                    }
                    boolean isText = type.equals("text") || type.equals("input_text");
                    if (isText && isReminder(part.path("text").asText(""))) continue;
                    person = true;
                    if (isText) text = part.path("text").asText("");
                }
                // reminders alone in a new conversation keep saying it opens one: a side call (BackgroundCalls)
                return person ? prompt(text, opens) : new Turn(Kind.CONTINUATION, null, opens && !toolResult, !toolResult);
            }

            /** Claude Code's probe at start: one user message, one text block "Warmup" marked for caching. */
            static boolean isWarmup(JsonNode messages) {
                if (messages.size() != 1 || !messages.get(0).path("role").asText("").equals("user")) return false;
                JsonNode content = messages.get(0).path("content");
                if (!content.isArray() || content.size() != 1) return false;
                JsonNode block = content.get(0);
                return block.path("type").asText("").equals("text") && block.path("text").asText("").equals("Warmup")
                    && block.path("cache_control").path("type").asText("").equals("ephemeral");
            }
        }

        /**
         * Background calls: what a client sends on its own, with no person's prompt, told by what the call carries
         * (never by the model it names). Claude Code's Warmup probe; a title or topic call (a system prompt that asks
         * for one, or structured output that is only a title); a compaction (Claude Code's and Codex's summary prompts,
         * Codex's compaction_trigger item); a new conversation that carries no person's text. The markers are the
         * clients' own words (WIRE.md, Claude Code 2.1.331's binary, Codex's and opencode's prompts); a person's text
         * counts only where it starts with one in a compaction's place, so a prompt that quotes a marker stays a prompt.
         */
        static final class BackgroundCalls {
            /** System-prompt openings of title and topic calls: Claude Code (now, and before 2.x), opencode. */
            static final List<String> TITLE_SYSTEMS = List.of("You are naming a coding session",
                "Analyze if this message indicates a new conversation topic", "You are a title generator");
            /** System-prompt openings of compaction calls (Claude Code before 2.x). */
            static final List<String> COMPACTION_SYSTEMS = List.of("You are a helpful AI assistant tasked with summarizing conversations");
            /** The last user text of compaction calls: Claude Code's /compact and auto-compact, Codex's local compaction. */
            static final List<String> COMPACTION_PROMPTS = List.of("CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.",
                "You are performing a CONTEXT CHECKPOINT COMPACTION");
            static final String COMPACTION_TRIGGER = "compaction_trigger";

            private BackgroundCalls() {
            }

            /** An Anthropic Messages request: its turn, told apart as a background call where it is one. */
            static Turn anthropic(JsonNode body) {
                List<String> system = texts(body.get("system"));
                JsonNode format = body.path("output_config").path("format");
                if (!format.isObject()) format = body.path("output_format");
                return classify(Turn.ofMessages(body.path("messages")), system, format.path("schema"), false);
            }

            /** A chat-completions request: system and developer messages are its system prompt. */
            static Turn chat(JsonNode body) {
                List<String> system = new ArrayList<>();
                for (JsonNode m : body.path("messages")) {
                    String role = m.path("role").asText("");
                    if (role.equals("system") || role.equals("developer")) system.addAll(texts(m.get("content")));
                }
                JsonNode schema = body.path("response_format").path("json_schema").path("schema");
                return classify(Turn.ofMessages(body.path("messages")), system, schema, false);
            }

            /** A Responses request (its input as it goes upstream): instructions and system or developer items are its system prompt. */
            static Turn responses(JsonNode body, JsonNode input, boolean continuesAResponse) {
                List<String> system = new ArrayList<>(texts(body.get("instructions")));
                boolean trigger = false;
                if (input != null && input.isArray()) {
                    for (JsonNode item : input) {
                        String role = item.path("role").asText("");
                        if (role.equals("system") || role.equals("developer")) system.addAll(texts(item.get("content")));
                    }
                    trigger = !input.isEmpty() && input.get(input.size() - 1).path("type").asText("").equals(COMPACTION_TRIGGER);
                }
                JsonNode schema = body.path("text").path("format").path("schema");
                return classify(Turn.ofResponsesInput(input, continuesAResponse), system, schema, trigger);
            }

            private static Turn classify(Turn turn, List<String> system, JsonNode schema, boolean compactionTrigger) {
                if (turn.kind() == Turn.Kind.WARMUP) return turn;
                String last = turn.kind() == Turn.Kind.PROMPT && turn.personText() != null ? turn.personText() : "";
                if (compactionTrigger || opensWith(system, COMPACTION_SYSTEMS) || opensWith(List.of(last), COMPACTION_PROMPTS)) {
                    return turn.as(Turn.Kind.COMPACTION);
                }
                if (opensWith(system, TITLE_SYSTEMS) || onlyATitle(schema)) return turn.as(Turn.Kind.TITLE);
                // a new conversation whose last user message has no person's text nor tool result: nobody typed anything
                if (turn.kind() == Turn.Kind.CONTINUATION && turn.opensConversation() && turn.textLast()) return turn.as(Turn.Kind.SIDE_CALL);
                return turn;
            }

            /** Structured output whose whole answer is a title (Claude Code's session title; older: isNewTopic and title). */
            private static boolean onlyATitle(JsonNode schema) {
                if (!schema.path("properties").has("title")) return false;
                List<String> fields = new ArrayList<>();
                schema.path("properties").fieldNames().forEachRemaining(fields::add);
                fields.remove("isNewTopic");
                return fields.equals(List.of("title"));
            }

            private static boolean opensWith(List<String> texts, List<String> openings) {
                for (String text : texts) {
                    // leading white space skipped without copying the text (a system prompt can be 30 KB)
                    int from = 0;
                    while (from < text.length() && Character.isWhitespace(text.charAt(from))) from++;
                    for (String opening : openings) if (text.startsWith(opening, from)) return true;
                }
                return false;
            }

            /** The texts of a system prompt, a message's content or instructions: a string, or text parts of any API. */
            private static List<String> texts(JsonNode content) {
                if (content == null || content.isNull()) return List.of();
                if (content.isTextual()) return List.of(content.asText());
                List<String> out = new ArrayList<>();
                for (JsonNode part : content) {
                    if (part.path("text").isTextual()) out.add(part.path("text").asText());
                }
                return out;
            }
        }

        /**
         * Streaming chat answers, chunk by chunk: role on each choice's first delta, split choices merged into
         * index 0, tool calls keyed by (choice, index) and renumbered from 0 with id, type and name on their first
         * fragment, finish_reason held back and sent once at the end, usage sent last when the client asked for it.
         */
        static final class ChatStreamNormalizer {
            private final boolean merge;
            private final boolean includeUsage;
            private String id;
            private String model;
            private long created;
            private final Map<Integer, Boolean> roleSent = new TreeMap<>();
            private final Map<String, Integer> toolIndex = new LinkedHashMap<>();
            private final ChatChunks.ToolKeys toolKeys = new ChatChunks.ToolKeys();
            private final Map<Integer, Integer> toolCount = new TreeMap<>();
            private final Map<Integer, String> finishReasons = new TreeMap<>();
            private JsonNode usage;
            /** Copilot's cost figure where a chunk carries it beside the usage; it goes out beside it too. */
            private JsonNode copilotUsage;
            private boolean finished;

            ChatStreamNormalizer(boolean merge, boolean includeUsage) {
                this.merge = merge;
                this.includeUsage = includeUsage;
            }

            /** Chunks that name this model, whatever Copilot's say (a background call keeps the name it asked for). */
            ChatStreamNormalizer named(String name) {
                model = name;
                return this;
            }

            /** True once any choice carried a finish_reason. */
            boolean finished() {
                return finished;
            }

            /** The usage Copilot reported, or null. */
            JsonNode usage() {
                return usage;
            }

            List<ObjectNode> onChunk(JsonNode chunk) {
                remember(chunk);
                List<ObjectNode> out = new ArrayList<>();
                ArrayNode current = null;
                for (JsonNode choice : chunk.path("choices")) {
                    ObjectNode normalized = normalizeChoice(choice);
                    if (normalized == null) continue;
                    if (current == null || merge) {
                        ObjectNode c = envelope();
                        current = c.putArray("choices");
                        out.add(c);
                    }
                    current.add(normalized);
                }
                return out;
            }

            List<ObjectNode> finish() {
                List<ObjectNode> out = new ArrayList<>();
                if (roleSent.isEmpty()) roleSent.put(0, false);
                for (Integer index : roleSent.keySet()) {
                    ObjectNode c = envelope();
                    ObjectNode choice = c.putArray("choices").addObject();
                    choice.put("index", index);
                    ObjectNode delta = choice.putObject("delta");
                    if (!roleSent.get(index)) {
                        delta.put("role", "assistant");
                        delta.put("content", "");
                    }
                    choice.put("finish_reason", finishReason(index));
                    out.add(c);
                }
                if (includeUsage && usage != null) {
                    ObjectNode c = envelope();
                    c.putArray("choices");
                    c.set("usage", usage);
                    if (copilotUsage != null) c.set("copilot_usage", copilotUsage);
                    out.add(c);
                }
                return out;
            }

            private String finishReason(int index) {
                if (toolCount.getOrDefault(index, 0) > 0) return "tool_calls";
                return finishReasons.getOrDefault(index, "stop");
            }

            private void remember(JsonNode chunk) {
                if (chunk.path("usage").isObject()) usage = chunk.get("usage");
                if (chunk.path("copilot_usage").isObject()) copilotUsage = chunk.get("copilot_usage");
                if (id == null && chunk.path("id").isTextual() && !chunk.path("id").asText().isEmpty()) id = chunk.path("id").asText();
                if (model == null && chunk.path("model").isTextual() && !chunk.path("model").asText().isEmpty()) model = chunk.path("model").asText();
                if (created == 0 && chunk.path("created").asLong(0) > 0) created = chunk.path("created").asLong();
            }

            private ObjectNode envelope() {
                ObjectNode c = Json.object();
                c.put("id", id == null ? "chatcmpl-" + Ids.random(24) : id);
                if (id == null) id = c.path("id").asText();
                c.put("object", "chat.completion.chunk");
                c.put("created", created == 0 ? Instant.now().getEpochSecond() : created);
                if (created == 0) created = c.path("created").asLong();
                c.put("model", model == null ? "" : model);
                return c;
            }

            private ObjectNode normalizeChoice(JsonNode choice) {
                int upstreamIndex = choice.path("index").asInt(0);
                int index = merge ? 0 : upstreamIndex;
                ObjectNode delta = choice.path("delta").isObject() ? ((ObjectNode) choice.get("delta")).deepCopy() : Json.object();
                String finish = choice.path("finish_reason").isTextual() ? choice.path("finish_reason").asText() : null;
                if (finish != null) {
                    finished = true;
                    if (!finishReasons.containsKey(index) || !finish.equals("stop")) finishReasons.put(index, finish);
                }
                if (delta.path("tool_calls").isArray()) delta.set("tool_calls", toolCalls(upstreamIndex, index, delta.get("tool_calls")));
                if (delta.path("tool_calls").isArray() && delta.get("tool_calls").isEmpty()) delta.remove("tool_calls");
                delta.remove("role");
                boolean hasLogprobs = choice.path("logprobs").isObject();
                if (delta.isEmpty() && !hasLogprobs) return null;
                ObjectNode out = Json.object();
                out.put("index", index);
                ObjectNode d = out.putObject("delta");
                if (!roleSent.containsKey(index)) d.put("role", "assistant");
                roleSent.put(index, true);
                d.setAll(delta);
                if (hasLogprobs) out.set("logprobs", choice.get("logprobs"));
                out.putNull("finish_reason");
                return out;
            }

            private ArrayNode toolCalls(int upstreamChoice, int index, JsonNode calls) {
                ArrayNode out = Json.array();
                for (JsonNode call : calls) {
                    if (!call.isObject()) continue;
                    ObjectNode tc = ((ObjectNode) call).deepCopy();
                    String key = toolKeys.key(upstreamChoice, call);
                    Integer n = toolIndex.get(key);
                    boolean first = n == null;
                    if (first) {
                        n = toolCount.merge(index, 1, Integer::sum) - 1;
                        toolIndex.put(key, n);
                        if (!tc.path("id").isTextual() || tc.path("id").asText().isEmpty()) tc.put("id", "call_" + Ids.random(24));
                        tc.put("type", "function");
                        ObjectNode fn = tc.withObjectProperty("function");
                        if (!fn.path("name").isTextual()) fn.put("name", "");
                        if (!fn.has("arguments")) fn.put("arguments", "");
                    } else {
                        tc.remove("id");
                        tc.remove("type");
                        if (tc.path("function").isObject()) ((ObjectNode) tc.get("function")).remove("name");
                    }
                    tc.put("index", n);
                    out.add(tc);
                }
                return out;
            }
        }

        /** What a Copilot model allows, read from its catalog entry. maxOutputTokens 0 means "not known: do not clamp". */
        record ModelLimits(String id, int maxOutputTokens, Integer minThinkingBudget, Integer maxThinkingBudget,
                boolean wantsMaxCompletionTokens) {

            static final Pattern O_SERIES = Pattern.compile("o\\d.*");

            static ModelLimits from(JsonNode model) {
                if (model == null || !model.isObject()) return unknown("");
                String id = model.path("id").asText("");
                JsonNode caps = model.path("capabilities");
                int maxOutput = Math.max(0, caps.path("limits").path("max_output_tokens").asInt(0));
                JsonNode supports = caps.path("supports");
                return new ModelLimits(id, maxOutput, positive(supports.path("min_thinking_budget")),
                    positive(supports.path("max_thinking_budget")), wantsMaxCompletionTokens(id));
            }

            /** The limits of the tier asked for: the long tier's where the model has one and they are known. */
            static ModelLimits from(JsonNode model, boolean longContext) {
                ModelLimits plain = from(model);
                if (!longContext) return plain;
                int output = longTier(model).map(t -> t.path("max_output_tokens").asInt(0)).orElse(0);
                return output <= 0 ? plain : new ModelLimits(plain.id(), output, plain.minThinkingBudget(), plain.maxThinkingBudget(),
                    plain.wantsMaxCompletionTokens());
            }

            /**
             * The catalog's long-context tier of a model, if it has one. WIRE.md names the tier but not its field, so it
             * is read in several plausible shapes, first found wins: {@code capabilities.limits.long_context},
             * {@code capabilities.limits.context_tiers.long_context}, {@code capabilities.long_context(.limits)}, and
             * {@code billing.token_prices.long_context} (a price tier: the tier exists, its limits may be unknown).
             * The node may carry max_context_window_tokens, max_prompt_tokens and max_output_tokens.
             */
            static Optional<JsonNode> longTier(JsonNode model) {
                if (model == null) return Optional.empty();
                JsonNode caps = model.path("capabilities");
                JsonNode limits = caps.path("limits");
                for (JsonNode candidate : List.of(limits.path("long_context"), limits.path("context_tiers").path("long_context"),
                        caps.path("long_context").path("limits"), caps.path("long_context"),
                        model.path("billing").path("token_prices").path("long_context"))) {
                    if (candidate.isObject()) return Optional.of(candidate);
                }
                return Optional.empty();
            }

            /** A model missing from the catalog: no clamp, no thinking budget, the token field chosen by its id. */
            static ModelLimits unknown(String id) {
                return new ModelLimits(id, 0, null, null, wantsMaxCompletionTokens(id));
            }

            /** GPT-5 and the o-series reject max_tokens and want max_completion_tokens. */
            static boolean wantsMaxCompletionTokens(String id) {
                String s = id == null ? "" : id.toLowerCase(Locale.ROOT);
                return s.startsWith("gpt-5") || O_SERIES.matcher(s).matches();
            }

            boolean knowsMaxOutput() {
                return maxOutputTokens > 0;
            }

            boolean supportsThinking() {
                return maxThinkingBudget != null;
            }

            int minThinking() {
                return minThinkingBudget == null ? 1 : minThinkingBudget;
            }

            /** A requested budget within the model's min/max and below max_tokens; null when there is no room or no support. */
            Integer thinkingBudget(int requested, Integer maxTokens) {
                if (!supportsThinking()) return null;
                int budget = Math.max(minThinking(), Math.min(requested, maxThinkingBudget));
                if (maxTokens != null && budget >= maxTokens) budget = maxTokens - 1;
                return budget < minThinking() ? null : budget;
            }

            private static Integer positive(JsonNode n) {
                return n.isNumber() && n.asInt() > 0 ? n.asInt() : null;
            }
        }

        /** The catalog's long tier, asked for with a body field on /chat/completions and /responses (never on /v1/messages). */
        static final class LongContext {
            static final String FIELD = "contextTier";
            static final String TIER = "long_context";

            /** What the client did to ask, for the log: the [1m] name, the beta, the body field. */
            static String asked(String requested, String betas, JsonNode body) {
                List<String> ways = new ArrayList<>();
                if (requested.trim().toLowerCase(Locale.ROOT).endsWith(ModelResolver.LONG_SUFFIX)) ways.add("model " + requested);
                for (String b : Optional.ofNullable(betas).orElse("").split(",")) if (b.trim().startsWith("context-1m")) ways.add("beta " + b.trim());
                if (body.has(FIELD)) ways.add(FIELD + " " + Json.write(body.get(FIELD)));
                return String.join(", ", ways);
            }
        }

        // The Responses API and chat completions, the pivot format. Copilot serves its newest GPT models only on
        // /responses and Claude, Gemini and GPT-4.x only on /chat/completions; every model is reachable from every
        // inbound API through chat: inbound Responses for a chat-only model goes ResponsesToChat.request, then
        // the ChatStreamToResponses state machine (answers folded from it); inbound chat (or Anthropic, via
        // AnthropicToChat) for a responses-only model goes ChatToResponsesRequest.request, then
        // the ResponsesStreamToChat state machine (whole answers replayed through it as ResponseEvents). Reasoning crosses the pivot as
        // reasoning_text and reasoning_opaque (see ReasoningOpaque); Responses custom tools become function tools
        // with one string parameter (see CustomTools).

        /** A translated request body, with one line per field or item that was dropped or changed on the way. */
        record Translated(ObjectNode body, List<String> notes) {}

        /** Fresh ids and the current time, injected so that translators stay pure and tests stay deterministic. */
        interface IdClock {
            /** A fresh id starting with the prefix, e.g. {@code msg_}, {@code fc_}, {@code call_}. */
            String id(String prefix);

            long epochSeconds();

            IdClock SYSTEM = new IdClock() {
                @Override
                public String id(String prefix) {
                    return prefix + Ids.random(24);
                }

                @Override
                public long epochSeconds() {
                    return Instant.now().getEpochSecond();
                }
            };
        }

        /** Embeddings as openai-node wants them when it asks for base64: little-endian float32, base64-encoded. */
        static final class Embeddings {
            static JsonNode toBase64(JsonNode answer) {
                if (!answer.path("data").isArray()) return answer;
                ObjectNode out = ((ObjectNode) answer).deepCopy();
                for (JsonNode item : out.withArray("data")) {
                    JsonNode vector = item.path("embedding");
                    if (!vector.isArray()) continue;
                    ByteBuffer buf = ByteBuffer.allocate(vector.size() * 4).order(ByteOrder.LITTLE_ENDIAN);
                    for (JsonNode v : vector) buf.putFloat((float) v.asDouble());
                    ((ObjectNode) item).put("embedding", Base64.getEncoder().encodeToString(buf.array()));
                }
                return out;
            }
        }
    }

    // ==== 5.2 Anthropic: Messages to chat and back, the stream machine, model names, native requests, token counts ====

    /** The Anthropic Messages API: to chat completions and back, the native route's cleaning, model names, token counting. */
    static final class Anthropic {
        private Anthropic() {
        }

        /**
         * Anthropic Messages request to a Copilot chat-completions request. One instance per call holds the notes
         * and the tool names it shortened; callers use the static {@link #request}.
         */
        static final class AnthropicToChat {
            record Result(ObjectNode chatRequest, boolean vision, Initiator initiator, List<String> notes,
                Map<String, String> toolNameMap) {}

            static final String BILLING_HEADER = "x-anthropic-billing-header:";
            static final int MAX_TOOL_NAME = 64;
            static final Pattern PLAIN_USER_ID = Pattern.compile("[A-Za-z0-9_.:-]{1,64}");
            static final int LOW_EFFORT_BUDGET = 2048;
            static final int MEDIUM_EFFORT_BUDGET = 8192;
            static final String TOOL_IMAGE_POINTER = "(the tool returned an image; it follows in the next user message)";
            static final Set<String> READ_KEYS = Set.of("model", "messages", "system", "max_tokens", "stop_sequences",
                "temperature", "top_p", "stream", "tools", "tool_choice", "thinking", "metadata", "output_config");

            private final ModelLimits limits;
            private final List<String> notes = new ArrayList<>();
            private final Map<String, String> toolNames = new LinkedHashMap<>();

            private AnthropicToChat(ModelLimits limits) {
                this.limits = limits;
            }

            static Result request(ObjectNode anthropic, String upstreamModel, ModelLimits limits) {
                return new AnthropicToChat(limits).translate(anthropic, upstreamModel);
            }

            private Result translate(ObjectNode a, String upstreamModel) {
                JsonNode messages = a.path("messages");
                if (!messages.isArray()) throw invalid("'messages' must be an array");
                ObjectNode chat = Json.object();
                chat.put("model", upstreamModel);
                ArrayNode out = chat.putArray("messages");
                String system = systemText(a.get("system"));
                if (!system.isEmpty()) out.addObject().put("role", "system").put("content", system);
                for (int i = 0; i < messages.size(); i++) message(messages.get(i), i, out);
                keepToolAnswersAdjacent(out);
                Integer maxTokens = maxTokens(a, chat);
                sampling(a, chat);
                thinking(a, chat, maxTokens);
                tools(a, chat);
                user(a, chat);
                stream(a, chat);
                ignored(a);
                return new Result(chat, Json.containsImage(out), Initiator.of(messages),
                    List.copyOf(notes), Map.copyOf(toolNames));
            }

            // ---- messages ----

            private void message(JsonNode m, int i, ArrayNode out) {
                if (!m.isObject()) throw invalid("messages[" + i + "] must be an object");
                String role = m.path("role").asText("");
                List<JsonNode> blocks = blocks(m.get("content"), "messages[" + i + "].content");
                switch (role) {
                    case "user" -> userTurn(blocks, out);
                    case "assistant" -> assistantTurn(blocks, out);
                    case "system" -> {
                        String text = systemText(m.get("content"));
                        if (!text.isEmpty()) out.addObject().put("role", "system").put("content", text);
                    }
                    default -> throw invalid("messages[" + i + "].role must be \"user\" or \"assistant\", not \"" + role + "\"");
                }
            }

            /** A system message between tool calls and their tool answers moves after the answers (chat needs them adjacent). */
            private static void keepToolAnswersAdjacent(ArrayNode out) {
                for (int i = out.size() - 2; i >= 1; i--) {
                    if (!out.get(i).path("role").asText().equals("system")) continue;
                    int j = i;
                    while (j + 1 < out.size() && out.get(j + 1).path("role").asText().equals("tool")) {
                        JsonNode system = out.get(j);
                        out.set(j, out.get(j + 1));
                        out.set(j + 1, system);
                        j++;
                    }
                }
            }

            /**
             * Tool answers first (one tool message per tool_result), then the rest as one user message. Text that is only
             * the editor's reminders beside tool results joins the last tool answer instead: a user message last would
             * make the turn a person's in Copilot's eyes, which refuses X-Initiator agent there and bills it.
             */
            private void userTurn(List<JsonNode> blocks, ArrayNode out) {
                List<ObjectNode> toolImages = new ArrayList<>();
                List<ObjectNode> parts = new ArrayList<>();
                ObjectNode lastTool = null;
                for (JsonNode b : blocks) {
                    String type = b.path("type").asText("");
                    switch (type) {
                        case "tool_result" -> out.add(lastTool = toolMessage(b, toolImages));
                        case "text", "image", "document" -> contentPart(b).ifPresent(parts::add);
                        default -> notes.add("dropped a " + describeType(type) + " block from a user message");
                    }
                }
                if (lastTool != null && toolImages.isEmpty() && !parts.isEmpty() && parts.stream().allMatch(AnthropicToChat::isReminderPart)) {
                    StringBuilder text = new StringBuilder(lastTool.path("content").asText());
                    for (ObjectNode p : parts) text.append("\n\n").append(p.path("text").asText());
                    lastTool.put("content", text.toString());
                    return;
                }
                List<ObjectNode> all = new ArrayList<>(toolImages);
                all.addAll(parts);
                if (!all.isEmpty()) out.add(userMessage(all));
            }

            private static boolean isReminderPart(ObjectNode part) {
                return part.path("type").asText().equals("text") && Turn.isReminder(part.path("text").asText(""));
            }

            private static ObjectNode userMessage(List<ObjectNode> parts) {
                ObjectNode m = Json.object();
                m.put("role", "user");
                if (parts.size() == 1 && parts.get(0).path("type").asText().equals("text")) {
                    m.put("content", parts.get(0).path("text").asText());
                } else {
                    m.putArray("content").addAll(parts);
                }
                return m;
            }

            /** Tool messages are text only: images go to the user message that follows, errors stay visible. */
            private ObjectNode toolMessage(JsonNode b, List<ObjectNode> images) {
                String id = b.path("tool_use_id").asText("");
                if (id.isBlank()) throw invalid("a tool_result block needs a tool_use_id");
                List<String> texts = new ArrayList<>();
                int imageCount = 0;
                for (JsonNode part : blocks(b.get("content"), "tool_result.content")) {
                    String type = part.path("type").asText("");
                    if (type.equals("image")) {
                        images.add(imagePart(part));
                        imageCount++;
                    } else if (type.equals("text") || type.equals("document")) {
                        contentPart(part).ifPresent(p -> texts.add(p.path("text").asText()));
                    } else {
                        notes.add("dropped a " + describeType(type) + " block from a tool_result");
                    }
                }
                String text = String.join("\n\n", texts);
                if (text.isEmpty() && imageCount > 0) text = TOOL_IMAGE_POINTER;
                if (b.path("is_error").asBoolean(false)) text = "Error: " + text;
                ObjectNode m = Json.object();
                m.put("role", "tool");
                m.put("tool_call_id", id);
                m.put("content", text);
                return m;
            }

            /** Text to content, tool_use to tool_calls, thinking to reasoning_text/reasoning_opaque (never to content). */
            private void assistantTurn(List<JsonNode> blocks, ArrayNode out) {
                List<String> texts = new ArrayList<>();
                List<String> reasoning = new ArrayList<>();
                ArrayNode calls = Json.array();
                String opaque = null;
                for (JsonNode b : blocks) {
                    String type = b.path("type").asText("");
                    switch (type) {
                        case "text" -> {
                            if (!b.path("text").asText("").isBlank()) texts.add(b.path("text").asText());
                        }
                        case "tool_use" -> calls.add(toolCall(b));
                        case "thinking" -> {
                            if (!b.path("thinking").asText("").isEmpty()) reasoning.add(b.path("thinking").asText());
                            if (opaque == null && !b.path("signature").asText("").isBlank()) opaque = b.path("signature").asText();
                        }
                        case "redacted_thinking" -> {
                            if (opaque == null && !b.path("data").asText("").isBlank()) opaque = b.path("data").asText();
                        }
                        default -> notes.add("dropped a " + describeType(type) + " block from an assistant message");
                    }
                }
                if (texts.isEmpty() && calls.isEmpty()) {
                    if (!reasoning.isEmpty() || opaque != null) notes.add("dropped an assistant message that held only thinking");
                    return;
                }
                ObjectNode m = out.addObject();
                m.put("role", "assistant");
                if (texts.isEmpty()) m.putNull("content");
                else m.put("content", String.join("\n\n", texts));
                if (!calls.isEmpty()) m.set("tool_calls", calls);
                if (!reasoning.isEmpty()) m.put("reasoning_text", String.join("\n\n", reasoning));
                if (opaque != null) m.put("reasoning_opaque", opaque);
            }

            private ObjectNode toolCall(JsonNode b) {
                String id = b.path("id").asText("");
                if (id.isBlank()) throw invalid("a tool_use block needs an id");
                ObjectNode call = Json.object();
                call.put("id", id);
                call.put("type", "function");
                ObjectNode fn = call.putObject("function");
                fn.put("name", toolName(b.path("name").asText("")));
                JsonNode input = b.get("input");
                fn.put("arguments", input == null || input.isNull() ? "{}" : Json.write(input));
                return call;
            }

            /** A text, image or document block as a chat content part; blank text is dropped. */
            private Optional<ObjectNode> contentPart(JsonNode b) {
                String type = b.path("type").asText("");
                if (type.equals("image")) return Optional.of(imagePart(b));
                String text = type.equals("document") ? documentText(b) : b.path("text").asText("");
                if (text.isBlank()) return Optional.empty();
                ObjectNode p = Json.object();
                p.put("type", "text");
                p.put("text", text);
                return Optional.of(p);
            }

            private static ObjectNode imagePart(JsonNode b) {
                JsonNode src = b.path("source");
                String kind = src.path("type").asText("");
                String url;
                if (kind.equals("base64")) {
                    String media = src.path("media_type").asText("");
                    String data = src.path("data").asText("");
                    if (media.isBlank() || data.isBlank()) throw invalid("an image with a base64 source needs media_type and data");
                    url = "data:" + media + ";base64," + data;
                } else if (kind.equals("url")) {
                    url = src.path("url").asText("");
                    if (url.isBlank()) throw invalid("an image with a url source needs a url");
                } else {
                    throw invalid("image sources of type \"" + kind + "\" cannot be sent to Copilot; send base64 data or a URL");
                }
                ObjectNode p = Json.object();
                p.put("type", "image_url");
                p.putObject("image_url").put("url", url);
                return p;
            }

            /** Text documents become text (titled when they have a title); anything else is refused with a 400. */
            private static String documentText(JsonNode b) {
                JsonNode src = b.path("source");
                String kind = src.path("type").asText("");
                String media = src.path("media_type").asText("");
                String text;
                if (kind.equals("text")) {
                    text = src.path("data").asText("");
                } else if (kind.equals("base64") && media.startsWith("text/")) {
                    try {
                        text = new String(Base64.getMimeDecoder().decode(src.path("data").asText("")), UTF_8);
                    } catch (IllegalArgumentException e) {
                        throw invalid("a " + media + " document's base64 data does not decode");
                    }
                } else if (kind.equals("content")) {
                    List<String> texts = new ArrayList<>();
                    for (JsonNode part : blocks(src.get("content"), "document.source.content")) {
                        if (part.path("type").asText("").equals("text") && !part.path("text").asText("").isBlank()) {
                            texts.add(part.path("text").asText());
                        }
                    }
                    text = String.join("\n\n", texts);
                } else {
                    String what = media.isBlank() ? kind + " source" : media;
                    throw invalid("Copilot's chat completions cannot read " + what + " documents; only text documents "
                        + "(source type \"text\" or a text/* media type) can be sent through copilot-api");
                }
                String title = b.path("title").asText("");
                return title.isBlank() || text.isBlank() ? text : title + "\n\n" + text;
            }

            // ---- system ----

            /** The system text: text blocks joined by a blank line, the billing header line removed. */
            private String systemText(JsonNode content) {
                List<String> parts = new ArrayList<>();
                for (JsonNode b : blocks(content, "system")) {
                    String type = b.path("type").asText("");
                    if (!type.equals("text")) {
                        notes.add("dropped a " + describeType(type) + " block from a system prompt");
                        continue;
                    }
                    String text = withoutBillingHeader(b.path("text").asText(""));
                    if (!text.isBlank()) parts.add(text);
                }
                return String.join("\n\n", parts);
            }

            /** Copilot refuses the reserved x-anthropic-billing-header line Claude Code puts into the system prompt. */
            static String withoutBillingHeader(String text) {
                if (!text.stripLeading().startsWith(BILLING_HEADER)) return text;
                int nl = text.indexOf('\n');
                return nl < 0 ? "" : text.substring(nl + 1);
            }

            // ---- tools ----

            private void tools(JsonNode a, ObjectNode chat) {
                ArrayNode tools = Json.array();
                Set<String> names = new LinkedHashSet<>();
                for (JsonNode t : a.path("tools")) {
                    String type = t.path("type").asText("");
                    String name = t.path("name").asText("");
                    if (!type.isEmpty() && !type.equals("custom")) {
                        notes.add("dropped the server tool " + name + " (" + type + "): Copilot cannot run Anthropic server tools");
                        continue;
                    }
                    if (name.isBlank()) throw invalid("every tool needs a name");
                    ObjectNode fn = tools.addObject().put("type", "function").putObject("function");
                    fn.put("name", toolName(name));
                    if (t.path("description").isTextual()) fn.put("description", t.path("description").asText());
                    fn.set("parameters", t.path("input_schema").isObject() ? t.get("input_schema").deepCopy() : emptySchema());
                    names.add(name);
                }
                if (!tools.isEmpty()) chat.set("tools", tools);
                toolChoice(a.path("tool_choice"), chat, names);
            }

            private void toolChoice(JsonNode choice, ObjectNode chat, Set<String> toolNames) {
                if (!choice.isObject()) return;
                String type = choice.path("type").asText("auto");
                if (toolNames.isEmpty()) {
                    if (!type.equals("auto") && !type.equals("none")) notes.add("ignored tool_choice " + type + ": no tool is left to call");
                    return;
                }
                switch (type) {
                    case "auto" -> chat.put("tool_choice", "auto");
                    case "any" -> chat.put("tool_choice", "required");
                    case "none" -> chat.put("tool_choice", "none");
                    case "tool" -> {
                        String name = choice.path("name").asText("");
                        if (toolNames.contains(name)) {
                            chat.putObject("tool_choice").put("type", "function").putObject("function").put("name", toolName(name));
                        } else {
                            notes.add("ignored tool_choice for " + name + ": no such tool is sent to Copilot");
                        }
                    }
                    default -> notes.add("ignored tool_choice of type " + type);
                }
                if (choice.path("disable_parallel_tool_use").asBoolean(false) && !type.equals("none")) {
                    chat.put("parallel_tool_calls", false);
                }
            }

            private String toolName(String name) {
                String shortName = shortToolName(name);
                if (!shortName.equals(name)) toolNames.put(shortName, name);
                return shortName;
            }

            /** Names over 64 characters: the first 55, '_' and 8 hex digits of the name's SHA-256 (reversed via toolNameMap). */
            static String shortToolName(String name) {
                if (name.length() <= MAX_TOOL_NAME) return name;
                byte[] hash = Ids.sha256().digest(name.getBytes(UTF_8));
                return name.substring(0, MAX_TOOL_NAME - 9) + "_" + HexFormat.of().formatHex(hash, 0, 4);
            }

            private static ObjectNode emptySchema() {
                ObjectNode s = Json.object();
                s.put("type", "object");
                s.putObject("properties");
                return s;
            }

            // ---- sampling, thinking, user, stream ----

            /** max_tokens clamped to the model's output limit, under the name the model wants; the value sent, or null. */
            private Integer maxTokens(JsonNode a, ObjectNode chat) {
                JsonNode n = a.get("max_tokens");
                if (n == null || !n.isIntegralNumber()) return null;
                int value = n.asInt();
                if (limits.knowsMaxOutput() && value > limits.maxOutputTokens()) {
                    notes.add("max_tokens " + value + " lowered to " + limits.id() + "'s limit of " + limits.maxOutputTokens());
                    value = limits.maxOutputTokens();
                }
                chat.put(limits.wantsMaxCompletionTokens() ? "max_completion_tokens" : "max_tokens", value);
                return value;
            }

            private static void sampling(JsonNode a, ObjectNode chat) {
                JsonNode stops = a.path("stop_sequences");
                if (stops.isArray() && !stops.isEmpty()) chat.set("stop", stops.deepCopy());
                if (a.path("temperature").isNumber()) chat.set("temperature", a.get("temperature"));
                if (a.path("top_p").isNumber()) chat.set("top_p", a.get("top_p"));
            }

            /** thinking_budget within the model's min/max and below max_tokens; omitted when the model has no budget. */
            private void thinking(JsonNode a, ObjectNode chat, Integer maxTokens) {
                Integer requested = requestedThinkingBudget(a);
                if (requested == null) return;
                if (!limits.supportsThinking()) {
                    notes.add("thinking not forwarded: " + limits.id() + " has no thinking budget in the Copilot catalog");
                    return;
                }
                Integer budget = limits.thinkingBudget(requested, maxTokens);
                if (budget == null) {
                    notes.add("thinking not forwarded: max_tokens " + maxTokens + " leaves no room for the minimum budget "
                        + limits.minThinking());
                    return;
                }
                chat.put("thinking_budget", budget);
            }

            /**
             * enabled: budget_tokens (8192 if missing); adaptive: by output_config.effort, low 2048, medium 8192, and high,
             * max or no effort the model's maximum (Anthropic's default effort is high).
             */
            static Integer requestedThinkingBudget(JsonNode a) {
                JsonNode t = a.path("thinking");
                switch (t.path("type").asText("")) {
                    case "enabled":
                        return t.path("budget_tokens").isIntegralNumber() ? t.get("budget_tokens").asInt() : MEDIUM_EFFORT_BUDGET;
                    case "adaptive":
                        String effort = a.path("output_config").path("effort").asText("high");
                        if (effort.equals("low")) return LOW_EFFORT_BUDGET;
                        if (effort.equals("medium")) return MEDIUM_EFFORT_BUDGET;
                        return Integer.MAX_VALUE;
                    default:
                        return null;
                }
            }

            /** metadata.user_id becomes `user` only when it is a short plain id (Claude Code sends a JSON string there). */
            private void user(JsonNode a, ObjectNode chat) {
                JsonNode id = a.path("metadata").path("user_id");
                if (id.isMissingNode() || id.isNull()) return;
                if (id.isTextual() && PLAIN_USER_ID.matcher(id.asText()).matches()) chat.put("user", id.asText());
                else notes.add("metadata.user_id not forwarded: not a short plain id");
            }

            private static void stream(JsonNode a, ObjectNode chat) {
                if (!a.path("stream").isBoolean()) return;
                boolean stream = a.path("stream").asBoolean();
                chat.put("stream", stream);
                if (stream) chat.putObject("stream_options").put("include_usage", true);
            }

            private void ignored(JsonNode a) {
                List<String> ignored = new ArrayList<>();
                a.fieldNames().forEachRemaining(k -> {
                    if (!READ_KEYS.contains(k)) ignored.add(k);
                });
                if (!ignored.isEmpty()) notes.add("ignored: " + String.join(", ", ignored));
            }

            // ---- helpers ----

            /** Content as a list of blocks: a string is one text block, null is none; cache_control is never copied. */
            private static List<JsonNode> blocks(JsonNode content, String where) {
                List<JsonNode> list = new ArrayList<>();
                if (content == null || content.isNull() || content.isMissingNode()) return list;
                if (content.isTextual()) {
                    list.add(Json.object().put("type", "text").put("text", content.asText()));
                    return list;
                }
                if (!content.isArray()) throw invalid("'" + where + "' must be a string or an array of content blocks");
                for (JsonNode b : content) {
                    if (!b.isObject()) throw invalid("'" + where + "' holds something that is not a content block");
                    list.add(b);
                }
                return list;
            }

            private static String describeType(String type) {
                return type.isEmpty() ? "typeless" : type;
            }

            private static ApiError invalid(String message) {
                return new ApiError(400, "invalid_request_error", message);
            }
        }

        /** The Anthropic message's pieces as the stream machine writes them: the shell, tool_use blocks, the stop reason, the usage. */
        static final class ChatToAnthropic {
            /** id, type, role, model, then whatever the caller adds (content, stop_reason, ...). */
            static ObjectNode messageShell(String id, String model) {
                ObjectNode msg = Json.object();
                msg.put("id", id);
                msg.put("type", "message");
                msg.put("role", "assistant");
                msg.put("model", model);
                return msg;
            }

            static ObjectNode toolUse(String id, String name, ObjectNode input) {
                ObjectNode b = Json.object();
                b.put("type", "tool_use");
                b.put("id", id);
                b.put("name", name);
                b.set("input", input);
                return b;
            }

            static String originalName(String name, Map<String, String> toolNameMap) {
                return toolNameMap == null ? name : toolNameMap.getOrDefault(name, name);
            }

            /**
             * tool_use whenever a tool is called; length → max_tokens; content_filter → refusal (the answer was cut by a
             * safety filter, and end_turn would pass a truncated answer off as complete); anything else → end_turn.
             */
            static String stopReason(Collection<String> finishReasons, boolean toolUse) {
                if (toolUse) return "tool_use";
                if (finishReasons.contains("length")) return "max_tokens";
                if (finishReasons.contains("content_filter")) return "refusal";
                return "end_turn";
            }

            /** Anthropic usage from chat usage: input_tokens excludes the cached prompt tokens. */
            static ObjectNode usage(JsonNode u) {
                int prompt = u.path("prompt_tokens").asInt(0);
                int cached = u.path("prompt_tokens_details").path("cached_tokens").asInt(0);
                ObjectNode o = Json.object();
                o.put("input_tokens", Math.max(0, prompt - cached));
                o.put("cache_creation_input_tokens", 0);
                o.put("cache_read_input_tokens", cached);
                o.put("output_tokens", u.path("completion_tokens").asInt(0));
                return o;
            }

            /** Tool arguments as a JSON object: blank → {}, anything that is not exactly one object → {} and a note. */
            static ObjectNode toolInput(String arguments, String toolName, List<String> notes) {
                if (arguments == null || arguments.isBlank()) return Json.object();
                try {
                    JsonNode parsed = JSON.readerFor(JsonNode.class)
                        .with(DeserializationFeature.FAIL_ON_TRAILING_TOKENS).readValue(arguments);
                    if (parsed != null && parsed.isObject()) return (ObjectNode) parsed;
                } catch (IOException e) {
                    // reported below
                }
                String shown = arguments.length() > 200 ? arguments.substring(0, 200) + "..." : arguments;
                notes.add("the arguments of a " + toolName + " call are not a JSON object, sent {} instead: " + shown);
                return Json.object();
            }
        }

        /**
         * A Copilot chat stream to Anthropic events, one instance per request. Thinking and text are sent as they arrive.
         * Tool calls are collected by (choice index, tool_call index) and each is sent whole at the end of the stream
         * (start, one input_json_delta with the checked JSON, stop): only then is a tool call known to be complete and
         * its arguments known to parse, so interleaved fragments can never land in a closed block. A thinking block's
         * signature (reasoning_opaque) is collected and sent just before the block closes; one that arrives after text
         * started gets its own empty thinking block. message_delta and message_stop come last; a broken upstream ends
         * with an error event instead. While tool arguments are collected the client hears nothing: callers send ping()
         * after ~15 s without a write to the client, not only after upstream silence.
         */
        static final class ChatStreamToAnthropic implements TranslatedRelay.Translation {
            private enum Open { NONE, THINKING, TEXT }

            /** A tool call being collected; sent when the stream ends. */
            private static final class ToolCall {
                String id = "";
                String name = "";
                final StringBuilder arguments = new StringBuilder();
            }

            private final String model;
            private final Map<String, String> toolNameMap;
            private final Supplier<String> randomIds;
            private final List<String> notes = new ArrayList<>();
            private final Map<String, ToolCall> toolCalls = new LinkedHashMap<>();
            private final ChatChunks.ToolKeys toolKeys = new ChatChunks.ToolKeys();
            private final Set<String> finishReasons = new LinkedHashSet<>();
            private final StringBuilder signature = new StringBuilder();
            private JsonNode usage;
            private boolean started;
            private boolean done;
            private int blocks;
            private Open open = Open.NONE;

            ChatStreamToAnthropic(String requestedModel, Map<String, String> toolNameMap) {
                this(requestedModel, toolNameMap, () -> Ids.random(24));
            }

            /** randomIds supplies the random part of the message id and of missing tool ids (fixed in tests). */
            ChatStreamToAnthropic(String requestedModel, Map<String, String> toolNameMap, Supplier<String> randomIds) {
                this.model = requestedModel;
                this.toolNameMap = toolNameMap == null ? Map.of() : toolNameMap;
                this.randomIds = randomIds;
            }

            /** True after message_stop or error: nothing more may be sent. */
            @Override
            public boolean done() {
                return done;
            }

            List<String> notes() {
                return List.copyOf(notes);
            }

            /** message_start, once; onChunk and finish send it too when it has not been sent yet. */
            @Override
            public List<NamedEvent> start() {
                List<NamedEvent> out = new ArrayList<>();
                if (started || done) return out;
                started = true;
                ObjectNode msg = ChatToAnthropic.messageShell("msg_" + randomIds.get(), model);
                msg.putArray("content");
                msg.putNull("stop_reason");
                msg.putNull("stop_sequence");
                ObjectNode u = ChatToAnthropic.usage(usage == null ? Json.object() : usage);
                u.put("output_tokens", 0);
                msg.set("usage", u);
                ObjectNode data = data("message_start");
                data.set("message", msg);
                out.add(new NamedEvent("message_start", data));
                return out;
            }

            @Override
            public List<NamedEvent> onChunk(JsonNode chunk) {
                if (done) return List.of();
                if (chunk.hasNonNull("error")) return fail(errorMessage(chunk.get("error")));
                if (chunk.path("usage").isObject()) usage = chunk.get("usage");
                List<NamedEvent> out = start();
                for (JsonNode choice : chunk.path("choices")) onChoice(choice, out);
                return out;
            }

            /** The upstream ended ([DONE], or EOF with or without a finish_reason): tools, message_delta, message_stop. */
            @Override
            public List<NamedEvent> finish() {
                if (done) return List.of();
                List<NamedEvent> out = start();
                close(out);
                for (ToolCall call : toolCalls.values()) sendTool(call, out);
                ObjectNode delta = data("message_delta");
                delta.putObject("delta").put("stop_reason", ChatToAnthropic.stopReason(finishReasons, !toolCalls.isEmpty()))
                    .putNull("stop_sequence");
                delta.set("usage", usage == null ? Json.object().put("output_tokens", 0) : ChatToAnthropic.usage(usage));
                out.add(new NamedEvent("message_delta", delta));
                out.add(new NamedEvent("message_stop", data("message_stop")));
                done = true;
                return out;
            }

            /** The upstream broke: one error event, and nothing after it. */
            @Override
            public List<NamedEvent> fail(String message) {
                if (done) return List.of();
                done = true;
                return List.of(new NamedEvent("error", AnthropicEvents.error("api_error", message)));
            }

            /** Anthropic's keep-alive. */
            @Override
            public NamedEvent keepAlive() {
                return new NamedEvent("ping", AnthropicEvents.ping());
            }

            private void onChoice(JsonNode choice, List<NamedEvent> out) {
                int index = choice.path("index").asInt(0);
                JsonNode delta = choice.path("delta");
                String reasoning = delta.path("reasoning_text").asText("");
                if (!reasoning.isEmpty()) thinkingDelta(reasoning, out);
                String opaque = delta.path("reasoning_opaque").asText("");
                if (!opaque.isEmpty()) {
                    ensureOpen(Open.THINKING, out);
                    signature.append(opaque);
                }
                String text = delta.path("content").asText("");
                if (!text.isEmpty()) textDelta(text, out);
                for (JsonNode call : delta.path("tool_calls")) collect(index, call);
                if (choice.path("finish_reason").isTextual()) finishReasons.add(choice.path("finish_reason").asText());
            }

            private void thinkingDelta(String text, List<NamedEvent> out) {
                ensureOpen(Open.THINKING, out);
                ObjectNode d = Json.object().put("type", "thinking_delta").put("thinking", text);
                out.add(blockDelta(d));
            }

            private void textDelta(String text, List<NamedEvent> out) {
                ensureOpen(Open.TEXT, out);
                ObjectNode d = Json.object().put("type", "text_delta").put("text", text);
                out.add(blockDelta(d));
            }

            private void ensureOpen(Open kind, List<NamedEvent> out) {
                if (open == kind) return;
                close(out);
                ObjectNode block = Json.object();
                if (kind == Open.THINKING) block.put("type", "thinking").put("thinking", "").put("signature", "");
                else block.put("type", "text").put("text", "");
                out.add(blockStart(block));
                open = kind;
            }

            /** Closes the open block; a thinking block first gets its signature, collected whole. */
            private void close(List<NamedEvent> out) {
                if (open == Open.NONE) return;
                if (open == Open.THINKING && signature.length() > 0) {
                    out.add(blockDelta(Json.object().put("type", "signature_delta").put("signature", signature.toString())));
                    signature.setLength(0);
                }
                ObjectNode stop = data("content_block_stop");
                stop.put("index", blocks - 1);
                out.add(new NamedEvent("content_block_stop", stop));
                open = Open.NONE;
            }

            /** Fragments keyed as every consumer keys them (ChatChunks.ToolKeys). */
            private void collect(int choice, JsonNode fragment) {
                String key = toolKeys.key(choice, fragment);
                ToolCall call = toolCalls.computeIfAbsent(key, k -> new ToolCall());
                if (call.id.isEmpty()) call.id = fragment.path("id").asText("");
                JsonNode fn = fragment.path("function");
                if (call.name.isEmpty()) call.name = fn.path("name").asText("");
                call.arguments.append(fn.path("arguments").asText(""));
            }

            private void sendTool(ToolCall call, List<NamedEvent> out) {
                String name = ChatToAnthropic.originalName(call.name, toolNameMap);
                String id = call.id.isEmpty() ? "toolu_" + randomIds.get() : call.id;
                ObjectNode input = ChatToAnthropic.toolInput(call.arguments.toString(), name, notes);
                out.add(blockStart(ChatToAnthropic.toolUse(id, name, Json.object())));
                out.add(blockDelta(Json.object().put("type", "input_json_delta").put("partial_json", Json.write(input))));
                ObjectNode stop = data("content_block_stop");
                stop.put("index", blocks - 1);
                out.add(new NamedEvent("content_block_stop", stop));
            }

            private NamedEvent blockStart(ObjectNode block) {
                ObjectNode d = data("content_block_start");
                d.put("index", blocks++);
                d.set("content_block", block);
                return new NamedEvent("content_block_start", d);
            }

            private NamedEvent blockDelta(ObjectNode delta) {
                ObjectNode d = data("content_block_delta");
                d.put("index", blocks - 1);
                d.set("delta", delta);
                return new NamedEvent("content_block_delta", d);
            }

            private static ObjectNode data(String type) {
                return Json.object().put("type", type);
            }

            private static String errorMessage(JsonNode error) {
                if (error.isTextual()) return error.asText();
                String m = error.path("message").asText("");
                return m.isBlank() ? "Copilot reported an error in the stream: " + Json.write(error) : m;
            }
        }

        /** Small Anthropic event bodies shared by the native relay and the translator, and the fold of events into a message. */
        static final class AnthropicEvents {
            /**
             * A whole message as the events a stream of it gives: message_start (the message with no content yet);
             * each block opened empty and filled by its deltas (text; thinking, then its signature; a tool's input as
             * JSON), a block of another kind opened whole; message_delta with the stop and the usage (Copilot's cost
             * figure beside it); message_stop.
             */
            static List<ObjectNode> of(JsonNode message) {
                if (!message.isObject()) throw new ApiError(502, "api_error", "Copilot's /v1/messages answer is not a JSON object");
                List<ObjectNode> events = new ArrayList<>();
                ObjectNode start = ((ObjectNode) message).deepCopy();
                start.putArray("content");
                events.add(event("message_start").set("message", start));
                int index = 0;
                for (JsonNode block : message.path("content")) {
                    if (!block.isObject()) continue;
                    ObjectNode opened = ((ObjectNode) block).deepCopy();
                    List<ObjectNode> deltas = new ArrayList<>();
                    switch (block.path("type").asText("")) {
                        case "text" -> delta(opened, "text", "text_delta", deltas);
                        case "thinking" -> {
                            delta(opened, "thinking", "thinking_delta", deltas);
                            delta(opened, "signature", "signature_delta", deltas);
                        }
                        case "tool_use" -> {
                            if (block.has("input")) deltas.add(Json.object().put("type", "input_json_delta").put("partial_json", Json.write(block.get("input"))));
                            opened.set("input", Json.object());
                        }
                        default -> { }
                    }
                    events.add(event("content_block_start").put("index", index).set("content_block", opened));
                    for (ObjectNode d : deltas) events.add(event("content_block_delta").put("index", index).set("delta", d));
                    events.add(event("content_block_stop").put("index", index++));
                }
                ObjectNode end = event("message_delta");
                ObjectNode delta = end.putObject("delta");
                for (String field : List.of("stop_reason", "stop_sequence")) if (message.has(field)) delta.set(field, message.get(field));
                if (message.has("usage")) end.set("usage", message.get("usage"));
                if (message.has("copilot_usage")) end.set("copilot_usage", message.get("copilot_usage"));
                events.add(end);
                events.add(event("message_stop"));
                return events;
            }

            private static ObjectNode event(String type) {
                return Json.object().put("type", type);
            }

            /** A text field of a block moved into one delta of its own (the block opened with it empty). */
            private static void delta(ObjectNode opened, String field, String deltaType, List<ObjectNode> deltas) {
                if (!opened.path(field).isTextual()) return;
                String text = opened.get(field).asText();
                opened.put(field, "");
                if (!text.isEmpty()) deltas.add(Json.object().put("type", deltaType).put(field, text));
            }

            /**
             * The message a stream of Anthropic events describes: message_start's message, each block as its start
             * gave it with its deltas applied (a tool's input_json_delta pieces parsed at its stop), then
             * message_delta's stop reason and usage. An error event is the answer's failure: a 502 in Anthropic's shape.
             */
            static ObjectNode message(List<Frame> events) {
                ObjectNode message = null;
                Map<Integer, ObjectNode> blocks = new TreeMap<>();
                Map<Integer, StringBuilder> inputs = new HashMap<>();
                for (Frame f : events) {
                    JsonNode d = f.json();
                    if (d == null) continue;
                    int index = d.path("index").asInt(-1);
                    switch (f.name() != null ? f.name() : d.path("type").asText("")) {
                        case "message_start" -> {
                            if (d.path("message").isObject()) message = ((ObjectNode) d.get("message")).deepCopy();
                        }
                        case "content_block_start" -> {
                            if (d.path("content_block").isObject()) blocks.put(index, ((ObjectNode) d.get("content_block")).deepCopy());
                        }
                        case "content_block_delta" -> {
                            ObjectNode block = blocks.get(index);
                            if (block != null) apply(block, d.path("delta"), inputs.computeIfAbsent(index, i -> new StringBuilder()));
                        }
                        case "content_block_stop" -> {
                            ObjectNode block = blocks.get(index);
                            StringBuilder input = inputs.remove(index);
                            if (block != null && input != null && input.length() > 0) {
                                block.set("input", Json.tryParse(input.toString()).orElse(Json.object()));
                            }
                        }
                        case "message_delta" -> {
                            if (message == null) break;
                            if (d.path("delta").isObject()) message.setAll(((ObjectNode) d.get("delta")).deepCopy());
                            if (d.path("usage").isObject()) message.withObjectProperty("usage").setAll(((ObjectNode) d.get("usage")).deepCopy());
                        }
                        case "error" -> throw new ApiError(502, "api_error", d.path("error").path("message").asText("the answer failed"));
                        default -> { }
                    }
                }
                if (message == null) throw new ApiError(502, "api_error", "the answer had no message");
                ArrayNode content = Json.array();
                blocks.values().forEach(content::add);
                message.set("content", content);
                return message;
            }

            private static void apply(ObjectNode block, JsonNode delta, StringBuilder input) {
                switch (delta.path("type").asText("")) {
                    case "text_delta" -> block.put("text", block.path("text").asText("") + delta.path("text").asText(""));
                    case "thinking_delta" -> block.put("thinking", block.path("thinking").asText("") + delta.path("thinking").asText(""));
                    case "signature_delta" -> block.put("signature", block.path("signature").asText("") + delta.path("signature").asText(""));
                    case "input_json_delta" -> input.append(delta.path("partial_json").asText(""));
                    case "citations_delta" -> block.withArray("citations").add(delta.path("citation"));
                    default -> { }
                }
            }

            static ObjectNode ping() {
                ObjectNode o = Json.object();
                o.put("type", "ping");
                return o;
            }

            static ObjectNode error(String type, String message) {
                ObjectNode o = Json.object();
                o.put("type", "error");
                ObjectNode err = o.putObject("error");
                err.put("type", type);
                err.put("message", message);
                return o;
            }
        }

        /**
         * Anthropic model names to Copilot's: exact ids, dated and dashed Claude ids to dotted ones, bare family
         * names to the family's newest, [1m] to a -1m variant, then the closest family member, then the
         * configured fallback. The user's --model-map is applied first.
         */
        static final class ModelResolver {
            /** The model that answers; {@code longContext}: the catalog's long tier was asked for and the model has one. */
            record Resolution(String requested, String upstream, JsonNode model, boolean longContext) {
                Resolution(String requested, String upstream, JsonNode model) {
                    this(requested, upstream, model, false);
                }
            }

            static final String LONG_SUFFIX = "[1m]";
            static final String FAST_SUFFIX = "-fast";
            private static final Pattern DATE = Pattern.compile("-(\\d{8}|latest)$");
            private static final Pattern VERSION = Pattern.compile("(\\d+)(?:\\.(\\d+))?");
            /** A version as clients write it: 4-7 or 4.7 (two digits at most after the separator, so no date). */
            private static final Pattern ASKED_VERSION = Pattern.compile("(\\d+)(?:[-.](\\d{1,2})(?!\\d))?");
            /** Words of a model id that name no family: vendor prefixes and variant suffixes. */
            private static final Set<String> NOT_FAMILIES = Set.of("claude", "gpt", "gemini", "grok", "fast", "latest", "preview");
            private static final int SUGGESTIONS = 6;

            /**
             * By the catalog, never by a fixed list of names: the user's map, then the id itself, then the same id
             * written another way (dates dropped, dots or dashes between numbers, any case), then the newest model
             * of the family the name mentions (a family is any word in the catalog's ids: opus, fable, sol, flash...).
             * {@code [1m]} asks for the long tier and {@code -fast} for the fast variant where the catalog lists them.
             */
            static Resolution resolve(String requested, boolean wantsLong, List<JsonNode> catalog, ModelRouting routing) {
                String id = requested.trim();
                String mapped = routing.userMap().get(id);
                if (mapped != null) id = mapped;
                if (id.toLowerCase(Locale.ROOT).endsWith(LONG_SUFFIX)) {
                    wantsLong = true;
                    id = id.substring(0, id.length() - LONG_SUFFIX.length());
                }
                Optional<JsonNode> hit = find(catalog, id);
                if (hit.isEmpty()) hit = sameKey(catalog, key(id));
                if (hit.isEmpty()) hit = fastVariant(catalog, id);
                if (hit.isEmpty()) hit = familyMember(catalog, id);
                boolean claude = id.toLowerCase(Locale.ROOT).startsWith("claude");
                if (hit.isEmpty() && claude && routing.fallback().isPresent()) hit = find(catalog, routing.fallback().get());
                if (hit.isEmpty()) throw notFound(requested, id, catalog);
                return withTier(requested, hit.get(), wantsLong, catalog);
            }

            /** The long tier: a legacy "-1m" model where the catalog still lists one, else the model's long tier if it has one. */
            private static Resolution withTier(String requested, JsonNode model, boolean wantsLong, List<JsonNode> catalog) {
                String id = model.path("id").asText();
                if (!wantsLong) return new Resolution(requested, id, model);
                Optional<JsonNode> legacy = id.endsWith("-1m") ? Optional.empty() : find(catalog, id + "-1m");
                if (legacy.isPresent()) return new Resolution(requested, id + "-1m", legacy.get());
                return new Resolution(requested, id, model, ModelLimits.longTier(model).isPresent());
            }

            /** Lower case, no date, dashes for dots: claude-sonnet-4-5-20250929 and claude-sonnet-4.5 have the same key. */
            static String key(String id) {
                return DATE.matcher(id.toLowerCase(Locale.ROOT)).replaceFirst("").replace('.', '-');
            }

            private static Optional<JsonNode> sameKey(List<JsonNode> catalog, String key) {
                for (JsonNode m : catalog) if (isChat(m) && key(m.path("id").asText()).equals(key)) return Optional.of(m);
                return Optional.empty();
            }

            /** A "-fast" name the catalog lacks: the fast variant of what the rest resolves to, else that model itself. */
            private static Optional<JsonNode> fastVariant(List<JsonNode> catalog, String id) {
                String lower = DATE.matcher(id.toLowerCase(Locale.ROOT)).replaceFirst("");
                if (!lower.endsWith(FAST_SUFFIX)) return Optional.empty();
                String base = lower.substring(0, lower.length() - FAST_SUFFIX.length());
                Optional<JsonNode> plain = sameKey(catalog, key(base)).or(() -> familyMember(catalog, base));
                return plain.map(p -> find(catalog, p.path("id").asText() + FAST_SUFFIX).orElse(p));
            }

            /**
             * The newest plain model (no -fast, no -1m) whose id has every family word of the name: "opus", "fable",
             * "claude-opus-4-7-20260101" (a Claude id the catalog lacks: the same version if listed, else the newest).
             * A versioned name of another vendor is never guessed: gpt-7-sol is not gpt-6-sol.
             */
            static Optional<JsonNode> familyMember(List<JsonNode> catalog, String id) {
                String lower = DATE.matcher(id.toLowerCase(Locale.ROOT)).replaceFirst("");
                List<String> words = familyWords(lower);
                if (words.isEmpty()) return Optional.empty();
                boolean versioned = VERSION.matcher(lower).find();
                boolean claude = lower.startsWith("claude");
                if (versioned && !claude) return Optional.empty();
                String prefix = lower.split("[-.]")[0];
                boolean vendorPrefix = NOT_FAMILIES.contains(prefix);
                JsonNode best = null;
                int[] bestVersion = null;
                for (JsonNode m : catalog) {
                    String mid = m.path("id").asText().toLowerCase(Locale.ROOT);
                    if (!isChat(m) || mid.endsWith("-1m") || mid.endsWith(FAST_SUFFIX) || !familyWords(mid).containsAll(words)) continue;
                    if (claude && !isAnthropic(m)) continue;
                    if (vendorPrefix && !claude && !mid.startsWith(prefix)) continue;
                    int[] v = version(mid);
                    if (versioned && compare(v, askedVersion(lower)) == 0) return Optional.of(m);
                    if (best == null || compare(v, bestVersion) > 0) {
                        best = m;
                        bestVersion = v;
                    }
                }
                return Optional.ofNullable(best);
            }

            static boolean isAnthropic(JsonNode m) {
                return m.path("vendor").asText().equalsIgnoreCase("anthropic") || m.path("id").asText().startsWith("claude");
            }

            private static List<String> familyWords(String id) {
                List<String> words = new ArrayList<>();
                for (String w : id.split("[-.\\s]+")) if (w.length() > 1 && w.chars().allMatch(Character::isLetter) && !NOT_FAMILIES.contains(w)) words.add(w);
                return words;
            }

            private static int[] askedVersion(String id) {
                var m = ASKED_VERSION.matcher(id);
                return m.find() ? new int[] {Integer.parseInt(m.group(1)), m.group(2) == null ? 0 : Integer.parseInt(m.group(2))} : new int[] {0, 0};
            }

            static int[] version(String id) {
                var m = VERSION.matcher(id);
                return m.find() ? new int[] {Integer.parseInt(m.group(1)), m.group(2) == null ? 0 : Integer.parseInt(m.group(2))} : new int[] {0, 0};
            }

            static int compare(int[] a, int[] b) {
                return a[0] != b[0] ? Integer.compare(a[0], b[0]) : Integer.compare(a[1], b[1]);
            }

            static Optional<JsonNode> find(List<JsonNode> catalog, String id) {
                for (JsonNode m : catalog) if (m.path("id").asText().equals(id)) return Optional.of(m);
                return Optional.empty();
            }

            static boolean isChat(JsonNode m) {
                return !m.path("capabilities").path("type").asText("chat").equals("embeddings");
            }

            static List<String> endpoints(JsonNode model) {
                List<String> out = new ArrayList<>();
                for (JsonNode e : model.path("supported_endpoints")) out.add(e.asText());
                return out;
            }

            private static ApiError notFound(String requested, String id, List<JsonNode> catalog) {
                List<String> close = closeMatches(id, catalog);
                String more = close.isEmpty() ? "Copilot's model list has no chat models (GET /v1/models shows what copilot-api read)"
                    : "Close matches: " + String.join(", ", close);
                return new ApiError(404, "invalid_request_error", "model: " + requested + " is not available through Copilot. " + more,
                    "model", "model_not_found");
            }

            /** The catalog's chat models nearest to the name (edit distance between keys), nearest first. */
            static List<String> closeMatches(String id, List<JsonNode> catalog) {
                String k = key(id);
                List<String> ids = new ArrayList<>();
                for (JsonNode m : catalog) if (isChat(m)) ids.add(m.path("id").asText());
                ids.sort(java.util.Comparator.comparingInt((String c) -> distance(k, key(c))).thenComparing(c -> c));
                return ids.subList(0, Math.min(SUGGESTIONS, ids.size()));
            }

            static int distance(String a, String b) {
                int[] row = new int[b.length() + 1];
                for (int j = 0; j <= b.length(); j++) row[j] = j;
                for (int i = 1; i <= a.length(); i++) {
                    int diagonal = row[0];
                    row[0] = i;
                    for (int j = 1; j <= b.length(); j++) {
                        int above = row[j];
                        row[j] = Math.min(Math.min(row[j] + 1, row[j - 1] + 1), diagonal + (a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1));
                        diagonal = above;
                    }
                }
                return row[b.length()];
            }
        }

        /** What Copilot's native /v1/messages accepts, from what Anthropic clients (Claude Code above all) send. */
        static final class AnthropicNative {
            /** {@code omitThinking}: the client asked for thinking display "omitted", so the thinking text goes on the way back. */
            record Prepared(ObjectNode body, List<String> notes, boolean omitThinking) {
                Prepared(ObjectNode body, List<String> notes) {
                    this(body, notes, false);
                }
            }

            static final List<String> FIELDS = List.of("model", "messages", "system", "max_tokens", "stop_sequences", "stream",
                "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking");
            static final List<String> TOOL_FIELDS = List.of("name", "description", "input_schema", "cache_control");

            static Prepared prepare(ObjectNode in, String upstreamModel, JsonNode model) {
                List<String> notes = new ArrayList<>();
                ObjectNode out = Json.object();
                // no copies: every edit below builds new nodes, so what is unchanged stays the very node that came in
                for (String f : FIELDS) if (in.has(f) && !in.get(f).isNull()) out.set(f, in.get(f));
                in.fieldNames().forEachRemaining(f -> {
                    if (!FIELDS.contains(f)) notes.add("dropped the field '" + f + "' (not accepted by Copilot)");
                });
                out.put("model", upstreamModel);
                stripBillingHeader(out);
                if (!claudeAtLeast(model, 4, 8)) out.set("messages", systemTurnsAsUser(out.withArray("messages")));
                filterTools(out, notes);
                ModelLimits limits = ModelLimits.from(model);
                if (limits.knowsMaxOutput() && out.path("max_tokens").asInt() > limits.maxOutputTokens()) {
                    out.put("max_tokens", limits.maxOutputTokens());
                }
                adjustThinking(out, in, limits);
                boolean summarized = claudeAtLeast(model, 4, 7) && out.path("thinking").path("type").asText().equals("enabled");
                // Claude 4.7+ thinks silently by default and Copilot cuts a silent stream after about a minute: ask for a summary
                if (summarized) ((ObjectNode) out.get("thinking")).put("display", "summarized");
                return new Prepared(out, notes, summarized && in.path("thinking").path("display").asText("").equals("omitted"));
            }

            /** A Claude model of this version or newer (by the catalog's id: claude-opus-4.8, claude-fable-5.1). */
            static boolean claudeAtLeast(JsonNode model, int major, int minor) {
                if (model == null || !ModelResolver.isAnthropic(model)) return false;
                return ModelResolver.compare(ModelResolver.version(model.path("id").asText()), new int[] {major, minor}) >= 0;
            }

            /** A streamed thinking text delta the client asked to omit (the signature delta stays). */
            static boolean isOmittedThinking(String event, JsonNode data) {
                return event.equals("content_block_delta") && data.path("delta").path("type").asText().equals("thinking_delta");
            }

            /** The billing-header line goes, the same way the translator removes it; a block left empty goes too. */
            static void stripBillingHeader(ObjectNode body) {
                JsonNode system = body.get("system");
                if (system == null) return;
                if (system.isTextual()) {
                    String text = AnthropicToChat.withoutBillingHeader(system.asText());
                    if (text.isBlank()) body.remove("system");
                    else body.put("system", text);
                } else if (system.isArray()) {
                    ArrayNode kept = Json.array();
                    for (JsonNode block : system) {
                        String text = block.path("text").asText("");
                        String cleaned = AnthropicToChat.withoutBillingHeader(text);
                        if (cleaned.equals(text)) kept.add(block);
                        else if (!cleaned.isBlank()) kept.add(((ObjectNode) block).deepCopy().put("text", cleaned));
                    }
                    if (kept.isEmpty()) body.remove("system");
                    else body.set("system", kept);
                }
            }

            /** Claude before 4.8 takes no system role inside messages; such turns travel as user turns. */
            static ArrayNode systemTurnsAsUser(ArrayNode messages) {
                boolean any = false;
                for (JsonNode m : messages) any |= m.path("role").asText().equals("system");
                if (!any) return messages;
                ArrayNode out = Json.array();
                for (JsonNode m : messages) {
                    if (m.path("role").asText().equals("system")) {
                        ObjectNode copy = ((ObjectNode) m).deepCopy();
                        copy.put("role", "user");
                        out.add(copy);
                    } else {
                        out.add(m);
                    }
                }
                return out;
            }

            static void filterTools(ObjectNode body, List<String> notes) {
                if (!body.path("tools").isArray()) return;
                ArrayNode kept = Json.array();
                for (JsonNode tool : body.get("tools")) {
                    String type = tool.path("type").asText("custom");
                    if (!type.equals("custom")) {
                        notes.add("dropped the server tool '" + tool.path("name").asText(type) + "' (" + type + "): Copilot cannot run it");
                        continue;
                    }
                    ObjectNode t = Json.object();
                    for (String f : TOOL_FIELDS) if (tool.has(f)) t.set(f, tool.get(f));
                    kept.add(t);
                }
                if (kept.isEmpty()) {
                    body.remove("tools");
                    body.remove("tool_choice");
                } else {
                    body.set("tools", kept);
                }
            }

            /** enabled keeps its budget, adaptive gets one by effort, both clamped to the model; the client's display is dropped. */
            static void adjustThinking(ObjectNode out, ObjectNode in, ModelLimits limits) {
                if (!in.path("thinking").isObject()) return;
                if (in.path("thinking").path("type").asText("").equals("disabled")) {
                    out.set("thinking", Json.object().put("type", "disabled"));
                    return;
                }
                Integer requested = AnthropicToChat.requestedThinkingBudget(in);
                Integer budget = requested == null ? null : limits.thinkingBudget(requested, out.path("max_tokens").asInt());
                if (budget == null) {
                    out.remove("thinking");
                    return;
                }
                out.set("thinking", Json.object().put("type", "enabled").put("budget_tokens", budget));
            }
        }

        /**
         * count_tokens: an estimate with the model's tokenizer (o200k_base unless the catalog names another) over
         * what would be sent, plus fixed costs per message, tool and image, and a margin for Claude's tokenizer,
         * which counts more tokens than OpenAI's for the same text.
         */
        static final class TokenCounter {
            static final int PER_MESSAGE = 4;
            static final int PER_TOOL = 12;
            static final int PER_IMAGE = 1600;
            static final double CLAUDE_MARGIN = 1.15;

            private static final class Registry {
                static final com.knuddels.jtokkit.api.EncodingRegistry INSTANCE = com.knuddels.jtokkit.Encodings.newLazyEncodingRegistry();
            }

            static int count(JsonNode body, JsonNode model) {
                int[] fixed = {0};
                StringBuilder text = new StringBuilder();
                collect(body.get("system"), text, fixed);
                for (JsonNode m : body.path("messages")) {
                    fixed[0] += PER_MESSAGE;
                    collect(m.get("content"), text, fixed);
                }
                for (JsonNode tool : body.path("tools")) {
                    fixed[0] += PER_TOOL;
                    text.append(tool.path("name").asText()).append('\n').append(tool.path("description").asText()).append('\n');
                    if (tool.has("input_schema")) text.append(Json.write(tool.get("input_schema"))).append('\n');
                }
                return count(text.toString(), fixed[0], model);
            }

            /** The text's tokens in the model's tokenizer, plus the fixed costs (messages, tools, images); Claude's with a margin. */
            static int count(String text, int fixed, JsonNode model) {
                String name = model.path("capabilities").path("tokenizer").asText("o200k_base");
                var type = com.knuddels.jtokkit.api.EncodingType.fromName(name).orElse(com.knuddels.jtokkit.api.EncodingType.O200K_BASE);
                int tokens = Registry.INSTANCE.getEncoding(type).countTokensOrdinary(text) + fixed;
                boolean claude = model.path("id").asText().startsWith("claude") || model.path("vendor").asText().equalsIgnoreCase("anthropic");
                return (int) Math.ceil(claude ? tokens * CLAUDE_MARGIN : tokens);
            }

            private static void collect(JsonNode content, StringBuilder text, int[] fixed) {
                if (content == null || content.isNull()) return;
                if (content.isTextual()) {
                    text.append(content.asText()).append('\n');
                    return;
                }
                for (JsonNode block : content) {
                    switch (block.path("type").asText("")) {
                        case "text" -> text.append(block.path("text").asText()).append('\n');
                        case "thinking" -> text.append(block.path("thinking").asText()).append('\n');
                        case "tool_use" -> text.append(block.path("name").asText()).append('\n').append(Json.write(block.path("input"))).append('\n');
                        case "tool_result" -> collect(block.get("content"), text, fixed);
                        case "image" -> fixed[0] += PER_IMAGE;
                        case "document" -> {
                            if (block.path("source").path("data").isTextual() && block.path("source").path("type").asText().equals("text")) {
                                text.append(block.path("source").path("data").asText()).append('\n');
                            } else {
                                fixed[0] += PER_IMAGE;
                            }
                        }
                        default -> text.append(Json.write(block)).append('\n');
                    }
                }
            }
        }
    }

    // ==== 5.3 Responses: Responses to chat and back, both stream machines, output items, reasoning ====

    /** The Responses API: to chat completions and back (both directions, streamed and not), output items, reasoning. */
    static final class Responses {
        private Responses() {
        }

        // Responses API translators: shared vocabulary

        /**
         * How reasoning survives a trip through chat completions.
         *
         * <p>Chat carries reasoning as {@code reasoning_text} plus one opaque string, {@code reasoning_opaque} (for Claude
         * on Copilot, the thinking signature). The Responses API carries {@code reasoning} items with an {@code id},
         * {@code summary} and {@code encrypted_content}. Two encodings, each the inverse of the other's direction:
         * <ul>
         *   <li>A Responses reasoning item seen on the chat side (answers of responses-only models) becomes
         *       {@code reasoning_opaque = "responses-reasoning:" + id + ":" + encrypted_content}, with {@code %} and
         *       {@code :} in the id written as {@code %25} and {@code %3A}. Several items are the concatenation of their
         *       encodings (base64 never contains {@code ':'}, so the prefix cannot occur inside encrypted content);
         *       concatenating streamed opaque deltas therefore stays decodable.
         *       {@link ChatToResponsesRequest} turns the string back into the items with their ids.</li>
         *   <li>A chat opaque string seen on the Responses side (answers of chat-only models) becomes a reasoning item
         *       with a fresh {@code rs_} id and {@code encrypted_content = "chat-reasoning:" + opaque}.
         *       {@link ResponsesToChat#request} gives the chat model back exactly the original string.</li>
         * </ul>
         * Reasoning that a model of the other family produced (a Claude signature sent to a GPT model, or OpenAI
         * encrypted content sent to Claude) cannot be verified by the receiving model and is dropped with a note.
         */
        static final class ReasoningOpaque {
            static final String RESPONSES_PREFIX = "responses-reasoning:";
            static final String CHAT_PREFIX = "chat-reasoning:";

            record Entry(String id, String encryptedContent) {}

            static String encode(String id, String encryptedContent) {
                return RESPONSES_PREFIX + id.replace("%", "%25").replace(":", "%3A") + ":" + encryptedContent;
            }

            static boolean isResponses(String opaque) {
                return opaque != null && opaque.startsWith(RESPONSES_PREFIX);
            }

            /** The reasoning items encoded in an opaque string; empty when it was not made by {@link #encode}. */
            static List<Entry> decode(String opaque) {
                List<Entry> entries = new ArrayList<>();
                if (!isResponses(opaque)) return entries;
                for (String part : opaque.substring(RESPONSES_PREFIX.length()).split(java.util.regex.Pattern.quote(RESPONSES_PREFIX), -1)) {
                    int colon = part.indexOf(':');
                    if (colon <= 0 || colon == part.length() - 1) continue;
                    String id = part.substring(0, colon).replace("%3A", ":").replace("%25", "%");
                    entries.add(new Entry(id, part.substring(colon + 1)));
                }
                return entries;
            }

            static String wrapChat(String opaque) {
                return CHAT_PREFIX + opaque;
            }

            /** The chat opaque string inside {@code encrypted_content} made by {@link #wrapChat}, if it is one. */
            static Optional<String> unwrapChat(String encryptedContent) {
                if (encryptedContent == null || !encryptedContent.startsWith(CHAT_PREFIX)) return Optional.empty();
                String s = encryptedContent.substring(CHAT_PREFIX.length());
                return s.isEmpty() ? Optional.empty() : Optional.of(s);
            }
        }

        /**
         * Responses {@code custom} tools take free text (optionally constrained by a grammar) instead of JSON arguments.
         * Chat models only know function tools, so a custom tool is offered as a function with one string parameter
         * {@code input} (the grammar, if any, goes into that parameter's description), and a call of it is turned back
         * into a {@code custom_tool_call} by name. Which names were custom is read again from the original request's
         * {@code tools}, so no state is kept between the request and the answer.
         */
        static final class CustomTools {
            static final String PARAMETER = "input";

            /** Names of the {@code custom} tools of a Responses request. */
            static Set<String> names(JsonNode responsesRequest) {
                Set<String> names = new LinkedHashSet<>();
                for (JsonNode t : responsesRequest.path("tools")) {
                    if (t.path("type").asText("").equals("custom") && t.path("name").isTextual()) names.add(t.path("name").asText());
                }
                return names;
            }

            /** The chat {@code function} object offering a custom tool: name, description, {@code {input: string}}. */
            static ObjectNode asFunction(String name, String description, JsonNode format) {
                ObjectNode fn = object();
                fn.put("name", name);
                if (description != null && !description.isBlank()) fn.put("description", description);
                ObjectNode params = fn.putObject("parameters");
                params.put("type", "object");
                ObjectNode input = params.putObject("properties").putObject(PARAMETER);
                input.put("type", "string");
                input.put("description", inputDescription(format));
                params.putArray("required").add(PARAMETER);
                params.put("additionalProperties", false);
                return fn;
            }

            /** Responses formats are flat ({@code syntax}, {@code definition}); chat nests them under {@code grammar}. */
            private static String inputDescription(JsonNode format) {
                String base = "The raw input for this tool, passed through verbatim.";
                if (!format.path("type").asText("").equals("grammar")) return base;
                JsonNode grammar = format.path("grammar").isObject() ? format.get("grammar") : format;
                return base + " It must match this " + grammar.path("syntax").asText("lark") + " grammar:\n"
                    + grammar.path("definition").asText("");
            }

            /** The JSON arguments of a function call standing for a custom call with this input. */
            static String arguments(String input) {
                ObjectNode args = object();
                args.put(PARAMETER, input);
                return Json.write(args);
            }

            /** The custom input inside a function call's arguments; the raw arguments when they are not {@code {input}}. */
            static String input(String arguments) {
                Optional<JsonNode> parsed = Json.tryParse(arguments);
                if (parsed.isEmpty() || !parsed.get().isObject()) return arguments == null ? "" : arguments;
                JsonNode args = parsed.get();
                if (args.path(PARAMETER).isTextual()) return args.path(PARAMETER).asText();
                if (args.size() == 1 && args.elements().next().isTextual()) return args.elements().next().asText();
                return arguments;
            }
        }

        /** Token counts between the two usage shapes; cached input and reasoning output tokens included. */
        static final class Usage {
            static ObjectNode toResponses(JsonNode chat) {
                ObjectNode u = object();
                long in = chat.path("prompt_tokens").asLong(0);
                long out = chat.path("completion_tokens").asLong(0);
                u.put("input_tokens", in);
                // chat usage has no count of tokens written to the cache; the Responses schema requires the field
                u.putObject("input_tokens_details").put("cached_tokens", chat.path("prompt_tokens_details").path("cached_tokens").asLong(0))
                    .put("cache_write_tokens", 0);
                u.put("output_tokens", out);
                u.putObject("output_tokens_details").put("reasoning_tokens",
                    chat.path("completion_tokens_details").path("reasoning_tokens").asLong(0));
                u.put("total_tokens", chat.path("total_tokens").asLong(in + out));
                return u;
            }

            static ObjectNode toChat(JsonNode responses) {
                ObjectNode u = object();
                long in = responses.path("input_tokens").asLong(0);
                long out = responses.path("output_tokens").asLong(0);
                u.put("prompt_tokens", in);
                u.put("completion_tokens", out);
                u.put("total_tokens", responses.path("total_tokens").asLong(in + out));
                u.putObject("prompt_tokens_details").put("cached_tokens", responses.path("input_tokens_details").path("cached_tokens").asLong(0));
                u.putObject("completion_tokens_details").put("reasoning_tokens",
                    responses.path("output_tokens_details").path("reasoning_tokens").asLong(0));
                return u;
            }
        }

        /** The Responses {@code response} object, echoing the request's settings the way the real API does. */
        static final class ResponseObject {
            static ObjectNode build(JsonNode request, String id, long createdAt, String model, String status) {
                ObjectNode r = object();
                r.put("id", id);
                r.put("object", "response");
                r.put("created_at", createdAt);
                r.put("status", status);
                r.put("background", false);
                r.putNull("error");
                r.putNull("incomplete_details");
                r.set("instructions", echo(request, "instructions", null));
                r.set("max_output_tokens", echo(request, "max_output_tokens", null));
                r.put("model", model);
                r.putArray("output");
                r.set("parallel_tool_calls", echo(request, "parallel_tool_calls", true));
                r.set("previous_response_id", echo(request, "previous_response_id", null));
                ObjectNode reasoning = r.putObject("reasoning");
                reasoning.set("effort", echo(request.path("reasoning"), "effort", null));
                reasoning.set("summary", echo(request.path("reasoning"), "summary", null));
                r.set("store", echo(request, "store", false));
                r.set("temperature", echo(request, "temperature", 1.0));
                ObjectNode text = r.putObject("text");
                text.set("format", request.path("text").path("format").isObject() ? request.path("text").get("format").deepCopy() : typeOnly("text"));
                if (request.path("text").has("verbosity")) text.set("verbosity", request.path("text").get("verbosity").deepCopy());
                r.set("tool_choice", echo(request, "tool_choice", "auto"));
                r.set("tools", request.path("tools").isArray() ? request.get("tools").deepCopy() : array());
                r.set("top_p", echo(request, "top_p", 1.0));
                r.set("truncation", echo(request, "truncation", "disabled"));
                r.putNull("usage");
                if (request.path("user").isTextual()) r.put("user", request.path("user").asText());
                r.set("metadata", request.path("metadata").isObject() ? request.get("metadata").deepCopy() : object());
                return r;
            }

            static void incomplete(ObjectNode response, String reason) {
                response.put("status", "incomplete");
                response.putObject("incomplete_details").put("reason", reason);
            }

            private static JsonNode echo(JsonNode request, String field, Object fallback) {
                JsonNode v = request.path(field);
                if (!v.isMissingNode() && !v.isNull()) return v.deepCopy();
                return JSON.valueToTree(fallback);
            }
        }

        // Responses: Responses request in, chat request out (chat-only models)

        /** Responses requests to chat requests, and Responses answers back to chat completions. */
        static final class ResponsesToChat {
            private static final List<String> BUILT_IN_TOOLS = List.of("web_search", "web_search_preview", "file_search",
                "code_interpreter", "computer_use", "computer_use_preview", "image_generation", "local_shell", "shell", "mcp");
            private static final List<String> HANDLED = List.of("model", "instructions", "input", "tools", "tool_choice",
                "max_output_tokens", "temperature", "top_p", "parallel_tool_calls", "stream", "reasoning", "text", "user");
            private static final Map<String, String> IGNORED = Map.of(
                "store", "copilot-api keeps the answer itself when asked to; Copilot is never asked to store it",
                "include", "encrypted reasoning is always returned",
                "truncation", "Copilot decides truncation",
                "metadata", "chat completions has no metadata; the answer echoes it",
                "prompt_cache_key", "chat completions has no cache key",
                "safety_identifier", "chat completions has no safety identifier",
                "service_tier", "Copilot has one service tier",
                "stream_options", "Responses stream options do not apply to chat",
                "top_logprobs", "log probabilities are not translated",
                "max_tool_calls", "chat completions has no tool-call limit");

            static Translated request(ObjectNode in) {
                List<String> notes = new ArrayList<>();
                rejectStateful(in);
                ObjectNode out = object();
                if (in.has("model")) out.set("model", in.get("model").deepCopy());
                ArrayNode messages = out.putArray("messages");
                JsonNode instructions = in.path("instructions");
                if (instructions.isTextual() && !instructions.asText().isEmpty()) {
                    messages.addObject().put("role", "system").put("content", instructions.asText());
                } else if (!instructions.isMissingNode() && !instructions.isNull() && !instructions.isTextual()) {
                    throw invalid("instructions", "'instructions' must be a string for this model");
                }
                new InputItems(messages, notes).addAll(in.path("input"));
                tools(in, out, notes);
                limits(in, out, notes);
                ignored(in, notes);
                return new Translated(out, notes);
            }

            static String chatId(String responseId) {
                return "chatcmpl-" + (responseId.startsWith("resp_") ? responseId.substring(5) : responseId);
            }

            static String finishReason(JsonNode responses, boolean calls) {
                if (responses.path("status").asText("").equals("incomplete")) {
                    String reason = responses.path("incomplete_details").path("reason").asText("");
                    return reason.equals("content_filter") ? "content_filter" : "length";
                }
                return calls ? "tool_calls" : "stop";
            }

            static List<String> summaryTexts(JsonNode reasoningItem) {
                List<String> texts = new ArrayList<>();
                for (JsonNode s : reasoningItem.path("summary")) {
                    if (s.path("text").isTextual() && !s.path("text").asText().isEmpty()) texts.add(s.path("text").asText());
                }
                return texts;
            }

            static void messageText(JsonNode item, StringBuilder text, StringBuilder refusal) {
                for (JsonNode part : item.path("content")) {
                    switch (part.path("type").asText("")) {
                        case "output_text" -> text.append(part.path("text").asText(""));
                        case "refusal" -> refusal.append(part.path("refusal").asText(""));
                        default -> { }
                    }
                }
            }

            static ObjectNode toolCall(String id, String name, String arguments) {
                ObjectNode tc = object();
                tc.put("id", id);
                tc.put("type", "function");
                ObjectNode fn = tc.putObject("function");
                fn.put("name", name);
                fn.put("arguments", arguments);
                return tc;
            }

            /**
             * The translator is pure and sees resolved requests (the route puts stored turns into 'input'), so anything
             * that still refers to a stored response or conversation is refused with a clear 400 rather than silently
             * answered without its context.
             */
            private static void rejectStateful(JsonNode in) {
                for (String field : List.of("previous_response_id", "conversation")) {
                    if (present(in, field)) {
                        throw invalid(field, "'" + field + "' must be resolved before translation to chat completions; "
                            + "send the whole conversation in 'input'.");
                    }
                }
                if (present(in, "prompt")) {
                    throw invalid("prompt", "'prompt' refers to a prompt stored at OpenAI, which copilot-api cannot read; "
                        + "send 'instructions' and 'input' instead.");
                }
                if (in.path("background").asBoolean(false)) {
                    throw invalid("background", "'background: true' is not supported: copilot-api runs no responses in the background to poll.");
                }
            }

            private static void tools(JsonNode in, ObjectNode out, List<String> notes) {
                ArrayNode tools = array();
                Set<String> offered = new LinkedHashSet<>();
                for (JsonNode t : in.path("tools")) {
                    String type = t.path("type").asText("");
                    String name = t.path("name").asText("");
                    if (type.equals("function")) {
                        tools.addObject().put("type", "function").set("function", function(t));
                        offered.add(name);
                    } else if (type.equals("custom")) {
                        tools.addObject().put("type", "function")
                            .set("function", CustomTools.asFunction(name, t.path("description").asText(null), t.path("format")));
                        offered.add(name);
                        notes.add("custom tool '" + name + "' offered as a function with one string parameter 'input'");
                    } else {
                        notes.add("dropped built-in tool '" + type + "': " + (BUILT_IN_TOOLS.contains(type)
                            ? "Copilot runs no hosted tools for chat models" : "unknown tool type"));
                    }
                }
                if (tools.isEmpty()) {
                    if (in.has("tool_choice")) notes.add("dropped 'tool_choice': no tool is left to choose");
                    return;
                }
                out.set("tools", tools);
                if (in.has("tool_choice")) {
                    JsonNode choice = toolChoice(in.get("tool_choice"), offered, notes);
                    if (choice != null) out.set("tool_choice", choice);
                }
                if (in.path("parallel_tool_calls").isBoolean()) out.set("parallel_tool_calls", in.get("parallel_tool_calls"));
            }

            private static ObjectNode function(JsonNode t) {
                ObjectNode fn = object();
                fn.put("name", t.path("name").asText(""));
                if (t.path("description").isTextual()) fn.set("description", t.get("description"));
                fn.set("parameters", t.path("parameters").isObject() ? t.get("parameters").deepCopy() : emptySchema());
                if (t.path("strict").isBoolean()) fn.set("strict", t.get("strict"));
                return fn;
            }

            private static JsonNode toolChoice(JsonNode choice, Set<String> offered, List<String> notes) {
                if (choice.isTextual()) return choice;
                String type = choice.path("type").asText("");
                if (type.equals("function") || type.equals("custom")) {
                    String name = choice.path("name").asText("");
                    if (!offered.contains(name)) {
                        notes.add("dropped 'tool_choice': tool '" + name + "' is not offered");
                        return null;
                    }
                    ObjectNode c = object();
                    c.put("type", "function");
                    c.putObject("function").put("name", name);
                    return c;
                }
                if (type.equals("allowed_tools")) {
                    notes.add("'tool_choice' allowed_tools sent as '" + choice.path("mode").asText("auto") + "' over all tools");
                    return JSON.getNodeFactory().textNode(choice.path("mode").asText("auto"));
                }
                notes.add("dropped 'tool_choice' of type '" + type + "': that tool is not available");
                return null;
            }

            private static void limits(JsonNode in, ObjectNode out, List<String> notes) {
                if (in.path("max_output_tokens").isNumber()) out.put("max_tokens", in.path("max_output_tokens").asInt());
                for (String f : List.of("temperature", "top_p", "user")) {
                    if (in.has(f) && !in.get(f).isNull()) out.set(f, in.get(f).deepCopy());
                }
                if (in.path("stream").asBoolean(false)) {
                    out.put("stream", true);
                    out.putObject("stream_options").put("include_usage", true);
                }
                if (in.path("reasoning").path("effort").isTextual()) out.put("reasoning_effort", in.path("reasoning").path("effort").asText());
                JsonNode format = in.path("text").path("format");
                switch (format.path("type").asText("text")) {
                    case "json_schema" -> {
                        ObjectNode rf = out.putObject("response_format");
                        rf.put("type", "json_schema");
                        ObjectNode schema = rf.putObject("json_schema");
                        for (String f : List.of("name", "description", "schema", "strict")) {
                            if (format.has(f)) schema.set(f, format.get(f).deepCopy());
                        }
                    }
                    case "json_object" -> out.putObject("response_format").put("type", "json_object");
                    default -> { }
                }
                if (in.path("text").has("verbosity")) notes.add("dropped 'text.verbosity': chat models have no verbosity setting");
            }

            private static void ignored(JsonNode in, List<String> notes) {
                in.fieldNames().forEachRemaining(f -> {
                    if (HANDLED.contains(f) || in.get(f).isNull()) return;
                    if (f.equals("background")) return;
                    notes.add("dropped '" + f + "': " + IGNORED.getOrDefault(f, "not supported when translating to chat completions"));
                });
            }

            /**
             * Input items to chat messages. Assistant-side items that follow each other (reasoning, assistant message,
             * function calls) are gathered into one assistant message, as chat and Claude want them.
             */
            private static final class InputItems {
                private final ArrayNode messages;
                private final List<String> notes;
                private ObjectNode assistant;

                InputItems(ArrayNode messages, List<String> notes) {
                    this.messages = messages;
                    this.notes = notes;
                }

                void addAll(JsonNode input) {
                    if (input.isTextual()) {
                        messages.addObject().put("role", "user").put("content", input.asText());
                        return;
                    }
                    if (!input.isArray()) throw invalid("input", "'input' must be a string or an array of input items");
                    for (JsonNode item : input) add(item);
                    flush();
                }

                private void add(JsonNode item) {
                    String type = item.path("type").asText(item.has("role") ? "message" : "");
                    switch (type) {
                        case "message" -> message(item);
                        case "reasoning" -> reasoning(item);
                        case "function_call" -> call(item, nonEmpty(item.path("arguments").asText(""), "{}"));
                        case "custom_tool_call" -> call(item, CustomTools.arguments(item.path("input").asText("")));
                        case "function_call_output", "custom_tool_call_output" -> toolResult(item);
                        case "item_reference" -> throw invalid("input", "input items of type 'item_reference' refer to stored items, "
                            + "which the route resolves from the store before translating; send the items themselves");
                        default -> notes.add("dropped input item of type '" + type + "': it has no chat completions equivalent");
                    }
                }

                private void message(JsonNode item) {
                    String role = item.path("role").asText("user");
                    JsonNode content = item.path("content");
                    switch (role) {
                        case "assistant" -> {
                            String text = assistantText(content);
                            if (text.isEmpty()) return;
                            ObjectNode a = assistant();
                            a.put("content", a.path("content").asText("") + text);
                        }
                        case "user" -> {
                            flush();
                            messages.addObject().put("role", "user").set("content", userContent(content));
                        }
                        case "system", "developer" -> {
                            flush();
                            messages.addObject().put("role", "system").put("content", plainText(content, "input"));
                        }
                        default -> throw invalid("input", "unknown message role '" + role + "'");
                    }
                }

                private void reasoning(JsonNode item) {
                    String id = item.path("id").asText("");
                    String encrypted = item.path("encrypted_content").asText(null);
                    Optional<String> opaque = ReasoningOpaque.unwrapChat(encrypted);
                    if (encrypted != null && opaque.isEmpty()) {
                        notes.add("dropped reasoning item '" + id + "': its encrypted content comes from a Responses model "
                            + "and a chat model cannot verify it");
                        return;
                    }
                    if (assistant != null && (assistant.has("content") || assistant.has("tool_calls") || assistant.has("reasoning_opaque"))) flush();
                    ObjectNode a = assistant();
                    String text = String.join("\n\n", summaryTexts(item));
                    if (!text.isEmpty()) a.put("reasoning_text", a.has("reasoning_text") ? a.get("reasoning_text").asText() + "\n\n" + text : text);
                    opaque.ifPresent(s -> a.put("reasoning_opaque", s));
                }

                private void call(JsonNode item, String arguments) {
                    String callId = item.path("call_id").asText(item.path("id").asText(""));
                    if (callId.isEmpty()) throw invalid("input", "a '" + item.path("type").asText() + "' input item needs a 'call_id'");
                    assistant().withArray("tool_calls").add(toolCall(callId, item.path("name").asText(""), arguments));
                }

                private void toolResult(JsonNode item) {
                    flush();
                    ObjectNode m = messages.addObject();
                    m.put("role", "tool");
                    m.put("tool_call_id", item.path("call_id").asText(""));
                    JsonNode output = item.path("output");
                    m.set("content", output.isTextual() ? output : toolOutput(output));
                }

                private JsonNode toolOutput(JsonNode output) {
                    if (!output.isArray()) return JSON.getNodeFactory().textNode(output.isMissingNode() || output.isNull() ? "" : output.toString());
                    ArrayNode parts = array();
                    for (JsonNode part : output) parts.add(contentPart(part));
                    if (parts.size() == 1 && parts.get(0).path("type").asText().equals("text")) return parts.get(0).get("text");
                    return parts;
                }

                private ObjectNode assistant() {
                    if (assistant == null) {
                        assistant = object();
                        assistant.put("role", "assistant");
                    }
                    return assistant;
                }

                private void flush() {
                    if (assistant == null) return;
                    ObjectNode a = assistant;
                    assistant = null;
                    if (!a.has("content") && !a.has("tool_calls")) {
                        notes.add("dropped reasoning that no assistant message or tool call followed");
                        return;
                    }
                    ObjectNode m = messages.addObject();
                    m.put("role", "assistant");
                    m.set("content", a.has("content") ? a.get("content") : null);
                    for (String f : List.of("reasoning_text", "reasoning_opaque", "tool_calls")) if (a.has(f)) m.set(f, a.get(f));
                }

                private JsonNode userContent(JsonNode content) {
                    if (content.isTextual()) return content;
                    ArrayNode parts = array();
                    for (JsonNode part : content) parts.add(contentPart(part));
                    if (parts.size() == 1 && parts.get(0).path("type").asText().equals("text")) return parts.get(0).get("text");
                    return parts;
                }

                private static String assistantText(JsonNode content) {
                    if (content.isTextual()) return content.asText();
                    StringBuilder b = new StringBuilder();
                    for (JsonNode part : content) {
                        if (part.path("text").isTextual()) b.append(part.path("text").asText());
                        else if (part.path("refusal").isTextual()) b.append(part.path("refusal").asText());
                    }
                    return b.toString();
                }
            }

            /** One Responses content part as a chat content part: text or image_url. */
            static ObjectNode contentPart(JsonNode part) {
                String type = part.path("type").asText("");
                switch (type) {
                    case "input_text", "output_text", "text" -> {
                        ObjectNode p = object();
                        p.put("type", "text");
                        p.put("text", part.path("text").asText(""));
                        return p;
                    }
                    case "input_image" -> {
                        if (!part.path("image_url").isTextual()) {
                            throw invalid("input", "images given by 'file_id' are not supported: copilot-api cannot read OpenAI "
                                + "files; send the image as a data URL or https URL in 'image_url'");
                        }
                        ObjectNode p = object();
                        p.put("type", "image_url");
                        ObjectNode url = p.putObject("image_url");
                        url.put("url", part.path("image_url").asText());
                        if (part.path("detail").isTextual()) url.put("detail", part.path("detail").asText());
                        return p;
                    }
                    case "input_file" -> {
                        return fileAsText(part);
                    }
                    default -> throw invalid("input", "content parts of type '" + type + "' are not supported for this model");
                }
            }

            /** A text file sent as a data URL becomes a text part; anything else cannot reach a chat model. */
            private static ObjectNode fileAsText(JsonNode part) {
                String data = part.path("file_data").asText("");
                java.util.regex.Matcher m = java.util.regex.Pattern.compile("^data:(text/[^;,]+|application/json)(;[^,]*)?,(.*)$",
                    java.util.regex.Pattern.DOTALL).matcher(data);
                if (!m.matches()) {
                    throw invalid("input", "'input_file' parts are only supported for text files sent as data URLs "
                        + "(file_data: data:text/...); chat models on Copilot cannot read other files");
                }
                boolean base64 = m.group(2) != null && m.group(2).contains(";base64");
                String body;
                try {
                    body = base64 ? new String(java.util.Base64.getMimeDecoder().decode(m.group(3)), java.nio.charset.StandardCharsets.UTF_8)
                        : java.net.URLDecoder.decode(m.group(3), java.nio.charset.StandardCharsets.UTF_8);
                } catch (IllegalArgumentException e) {
                    throw invalid("input", "an 'input_file' data URL does not decode as " + (base64 ? "base64" : "percent-encoded text")
                        + ": " + describe(e));
                }
                ObjectNode p = object();
                p.put("type", "text");
                String name = part.path("filename").asText("");
                p.put("text", name.isEmpty() ? body : name + ":\n" + body);
                return p;
            }

            /** The text of a system or developer message, from a string or text parts joined by blank lines. */
            static String plainText(JsonNode content, String param) {
                if (content.isTextual()) return content.asText();
                List<String> texts = new ArrayList<>();
                for (JsonNode part : content) {
                    if (!part.path("text").isTextual()) {
                        throw invalid(param, "system and developer messages may only contain text, not '" + part.path("type").asText() + "'");
                    }
                    texts.add(part.path("text").asText());
                }
                return String.join("\n\n", texts);
            }
        }

        // Responses: Chat answer out, Responses answer in (chat-only models)

        /** A whole Responses answer as the events a stream of it gives, and events folded back into the answer they end with. */
        static final class ResponseEvents {
            /**
             * The answer as its stream: response.created (the response with no output yet), each output item added and
             * done whole, then the terminal event its status calls for with the response itself (Copilot's cost figure
             * beside it, where a stream has it).
             */
            static List<ObjectNode> of(JsonNode response) {
                if (!response.isObject()) throw new ApiError(502, "api_error", "Copilot's /responses answer is not a JSON object");
                List<ObjectNode> events = new ArrayList<>();
                ObjectNode created = response.deepCopy();
                created.put("status", "in_progress");
                created.putArray("output");
                created.remove("copilot_usage");
                event(events, "response.created").set("response", created);
                int index = 0;
                for (JsonNode item : response.path("output")) {
                    event(events, "response.output_item.added").put("output_index", index).set("item", item);
                    event(events, "response.output_item.done").put("output_index", index++).set("item", item);
                }
                String status = response.path("status").asText("");
                ObjectNode end = event(events, status.equals("failed") ? "response.failed"
                    : status.equals("incomplete") ? "response.incomplete" : "response.completed");
                end.set("response", response);
                if (response.has("copilot_usage")) end.set("copilot_usage", response.get("copilot_usage"));
                return events;
            }

            private static ObjectNode event(List<ObjectNode> events, String type) {
                ObjectNode e = object();
                e.put("type", type);
                e.put("sequence_number", events.size());
                events.add(e);
                return e;
            }

            /**
             * The response of the terminal event (completed, incomplete or failed: the answer, whatever its status);
             * an error event is the answer's failure, a 502.
             */
            static ObjectNode response(List<Frame> events) {
                for (Frame f : events) {
                    JsonNode d = f.json();
                    if (d == null) continue;
                    String type = f.name() != null ? f.name() : d.path("type").asText("");
                    if (type.equals("error")) {
                        throw new ApiError(502, "api_error", d.path("message").asText(d.path("error").path("message").asText("the answer failed")));
                    }
                    if (ResponsesRoutes.TERMINAL.contains(type) && d.path("response").isObject()) return (ObjectNode) d.get("response");
                }
                throw new ApiError(502, "api_error", "the answer ended without a response");
            }
        }

        /** Output items in the shapes of the Responses API, shared by the answer and the stream translators. */
        static final class OutputItems {
            static ObjectNode reasoning(String id, String summary, String encryptedContent) {
                ObjectNode item = object();
                item.put("id", id);
                item.put("type", "reasoning");
                ArrayNode s = item.putArray("summary");
                if (!summary.isEmpty()) s.add(summaryPart(summary));
                if (encryptedContent != null) item.put("encrypted_content", encryptedContent);
                return item;
            }

            static ObjectNode message(String id, String text, String refusal, String status) {
                ObjectNode item = object();
                item.put("id", id);
                item.put("type", "message");
                item.put("status", status);
                item.put("role", "assistant");
                ArrayNode content = item.putArray("content");
                if (!text.isEmpty() || refusal.isEmpty()) content.add(textPart(text));
                if (!refusal.isEmpty()) content.add(refusalPart(refusal));
                return item;
            }

            static ObjectNode functionCall(String id, String callId, String name, String arguments, String status) {
                ObjectNode item = object();
                item.put("id", id);
                item.put("type", "function_call");
                item.put("status", status);
                item.put("arguments", arguments);
                item.put("call_id", callId);
                item.put("name", name);
                return item;
            }

            static ObjectNode customCall(String id, String callId, String name, String input) {
                ObjectNode item = object();
                item.put("id", id);
                item.put("type", "custom_tool_call");
                item.put("call_id", callId);
                item.put("name", name);
                item.put("input", input);
                return item;
            }

            static ObjectNode textPart(String text) {
                ObjectNode p = object();
                p.put("type", "output_text");
                p.put("text", text);
                p.putArray("annotations");
                p.putArray("logprobs");
                return p;
            }

            static ObjectNode refusalPart(String refusal) {
                ObjectNode p = object();
                p.put("type", "refusal");
                p.put("refusal", refusal);
                return p;
            }

            static ObjectNode summaryPart(String text) {
                ObjectNode p = object();
                p.put("type", "summary_text");
                p.put("text", text);
                return p;
            }
        }

        /**
         * Chat chunks (Copilot's raw stream) to Responses events, one instance per request. Feed every chunk to
         * {@link #onChunk}; at the end of the upstream stream call {@link #finish}, or {@link #fail} if it broke.
         *
         * <p>Events: {@code response.created}, {@code response.in_progress}, then per output item {@code output_item.added},
         * its part and delta events, {@code output_item.done}, and last exactly one of {@code response.completed},
         * {@code response.incomplete} (the token limit or the content filter stopped the answer) or {@code response.failed}.
         * Every event has a {@code sequence_number} counting from 0.
         *
         * <p>Only one item is open at a time, as the real API does. Reasoning and text stream live. The first tool call
         * streams live; once a tool call is open nothing else can be opened before the end of the stream (its fragments
         * may still be coming, interleaved with others), so later tool calls and any text after them are held and
         * written whole, in arrival order, by {@link #finish}. Tool calls are keyed by (choice index, tool call index), so
         * indices from 1 and calls in a second choice are fine. A custom tool's input is written when its call closes,
         * because it is the {@code input} string inside JSON arguments.
         */
        static final class ChatStreamToResponses {
            private final ResponseEventWriter writer;
            private final IdClock clock;
            private final Set<String> customNames;
            private final String requestModel;
            private String named;
            private boolean started;
            private boolean ended;
            private StreamItem open;
            private final List<StreamItem> held = new ArrayList<>();
            private final Map<String, StreamItem> calls = new HashMap<>();
            private final ChatChunks.ToolKeys toolKeys = new ChatChunks.ToolKeys();
            private JsonNode usage;
            private String stopReason;

            ChatStreamToResponses(ObjectNode originalRequest, IdClock clock) {
                this.writer = new ResponseEventWriter(originalRequest, clock);
                this.clock = clock;
                this.customNames = CustomTools.names(originalRequest);
                this.requestModel = originalRequest.path("model").asText("");
            }

            /** Events that name this model, whatever Copilot's chunks say (a background call keeps the name it asked for). */
            ChatStreamToResponses named(String name) {
                named = name;
                return this;
            }

            List<ObjectNode> onChunk(JsonNode chunk) {
                if (ended) return List.of();
                if (chunk.path("error").isObject()) return fail(chunk.path("error").path("message").asText("upstream error"));
                if (chunk.path("usage").isObject()) usage = chunk.get("usage");
                if (chunk.path("choices").isEmpty()) return List.of();
                start(chunk);
                for (JsonNode choice : chunk.path("choices")) {
                    JsonNode delta = choice.path("delta");
                    String reasoning = delta.path("reasoning_text").asText("");
                    if (!reasoning.isEmpty()) reasoningText(reasoning);
                    String opaque = delta.path("reasoning_opaque").asText("");
                    if (!opaque.isEmpty()) reasoningOpaque(opaque);
                    String content = delta.path("content").asText("");
                    if (!content.isEmpty()) text(content, false);
                    String refusal = delta.path("refusal").asText("");
                    if (!refusal.isEmpty()) text(refusal, true);
                    for (JsonNode tc : delta.path("tool_calls")) toolFragment(choice.path("index").asInt(0), tc);
                    String finish = choice.path("finish_reason").asText("");
                    if (finish.equals("length")) stopReason = "max_output_tokens";
                    else if (finish.equals("content_filter") && stopReason == null) stopReason = "content_filter";
                }
                return writer.drain();
            }

            /** At the end of the upstream stream: closes the open item, writes the held ones, then the terminal event. */
            List<ObjectNode> finish() {
                if (ended) return List.of();
                start(null);
                List<StreamItem> rest = new ArrayList<>();
                if (open != null) rest.add(open);
                rest.addAll(held);
                if (rest.isEmpty()) rest.add(new StreamItem(Kind.MESSAGE));
                for (int i = 0; i < rest.size(); i++) {
                    StreamItem item = rest.get(i);
                    if (item != open) writer.replay(item);
                    writer.close(item, stopReason != null && i == rest.size() - 1 ? State.INCOMPLETE : State.COMPLETED);
                }
                open = null;
                held.clear();
                writer.end(stopReason, usage);
                ended = true;
                return writer.drain();
            }

            /** The upstream broke: ends the stream with {@code response.failed}, keeping the output written so far. */
            List<ObjectNode> fail(String message) {
                if (ended) return List.of();
                start(null);
                writer.fail(message, open, usage);
                ended = true;
                return writer.drain();
            }

            /** Lifecycle events come with the first chunk that has choices: Copilot's first, empty one names no model. */
            private void start(JsonNode chunk) {
                if (started) return;
                started = true;
                long created = chunk == null ? 0 : chunk.path("created").asLong(0);
                String model = chunk == null ? "" : chunk.path("model").asText("");
                writer.start(created > 0 ? created : clock.epochSeconds(), named != null ? named : model.isEmpty() ? requestModel : model);
            }

            /** True once a tool call is open or anything is held: from then on new output waits for {@link #finish}. */
            private boolean holding() {
                return !held.isEmpty() || (open != null && open.kind.isCall());
            }

            /** Reasoning text after a signature starts a new reasoning item: the signature belongs to the text before it. */
            private void reasoningText(String s) {
                if (holding()) {
                    StreamItem r = heldItem(Kind.REASONING);
                    if (r.extra.length() > 0) held.add(r = new StreamItem(Kind.REASONING));
                    r.text.append(s);
                    return;
                }
                if (open != null && open.kind == Kind.REASONING && open.extra.length() > 0) closeOpen();
                StreamItem r = live(Kind.REASONING);
                r.text.append(s);
                writer.summaryDelta(r, s);
            }

            private void reasoningOpaque(String s) {
                (holding() ? heldItem(Kind.REASONING) : live(Kind.REASONING)).extra.append(s);
            }

            /** Text streams live; a refusal is kept and written as its own part when the message closes. */
            private void text(String s, boolean refusal) {
                StreamItem m = holding() ? heldItem(Kind.MESSAGE) : live(Kind.MESSAGE);
                (refusal ? m.extra : m.text).append(s);
                if (!refusal && m == open) writer.textDelta(m, s);
            }

            private void toolFragment(int choice, JsonNode tc) {
                String key = toolKeys.key(choice, tc);
                JsonNode fn = tc.path("function");
                StreamItem call = calls.get(key);
                if (call == null) {
                    call = new StreamItem(Kind.FUNCTION_CALL);
                    call.callId = tc.path("id").asText("");
                    call.name.append(fn.path("name").asText(""));
                    calls.put(key, call);
                    if (call.name.length() == 0 || holding()) {
                        held.add(call);
                    } else {
                        closeOpen();
                        open(call);
                    }
                } else if (call != open && call.name.length() == 0) {
                    call.name.append(fn.path("name").asText(""));
                }
                String args = fn.path("arguments").isTextual() ? fn.path("arguments").asText() : "";
                if (args.isEmpty()) return;
                call.text.append(args);
                if (call == open && call.kind == Kind.FUNCTION_CALL) writer.argumentsDelta(call, args);
            }

            private StreamItem heldItem(Kind kind) {
                StreamItem last = held.isEmpty() ? null : held.get(held.size() - 1);
                if (last != null && last.kind == kind) return last;
                StreamItem item = new StreamItem(kind);
                held.add(item);
                return item;
            }

            /** The open item if it is of this kind, else a new open item (closing the current one). */
            private StreamItem live(Kind kind) {
                if (open != null && open.kind == kind) return open;
                closeOpen();
                StreamItem item = new StreamItem(kind);
                open(item);
                return item;
            }

            private void open(StreamItem item) {
                if (item.kind.isCall()) item.kind = customNames.contains(item.name.toString()) ? Kind.CUSTOM_CALL : Kind.FUNCTION_CALL;
                writer.add(item);
                open = item;
            }

            private void closeOpen() {
                if (open == null) return;
                writer.close(open, State.COMPLETED);
                open = null;
            }
        }

        /** What a stream item is, and the id prefix the Responses API uses for it. */
        enum Kind {
            REASONING("rs_"), MESSAGE("msg_"), FUNCTION_CALL("fc_"), CUSTOM_CALL("ctc_");

            final String idPrefix;

            Kind(String idPrefix) {
                this.idPrefix = idPrefix;
            }

            boolean isCall() {
                return this == FUNCTION_CALL || this == CUSTOM_CALL;
            }
        }

        /** Which JSON of an item: the one {@code output_item.added} carries, or its final state. */
        enum State { ADDED, COMPLETED, INCOMPLETE }

        /**
         * One output item being built from chat deltas: {@code text} is the reasoning summary, the message text or the
         * call's arguments; {@code extra} is the reasoning signature or the message's refusal.
         */
        static final class StreamItem {
            Kind kind;
            String id;
            int outputIndex = -1;
            String callId = "";
            final StringBuilder name = new StringBuilder();
            final StringBuilder text = new StringBuilder();
            final StringBuilder extra = new StringBuilder();
            boolean partOpen;
            ObjectNode done;

            StreamItem(Kind kind) {
                this.kind = kind;
            }

            ObjectNode json(State state) {
                boolean added = state == State.ADDED;
                String status = added ? "in_progress" : state == State.INCOMPLETE ? "incomplete" : "completed";
                return switch (kind) {
                    case REASONING -> OutputItems.reasoning(id, added ? "" : text.toString(),
                        added || extra.length() == 0 ? null : ReasoningOpaque.wrapChat(extra.toString()));
                    case MESSAGE -> {
                        ObjectNode m = OutputItems.message(id, added ? "" : text.toString(), added ? "" : extra.toString(), status);
                        if (added) m.putArray("content");
                        yield m;
                    }
                    case FUNCTION_CALL -> OutputItems.functionCall(id, callId, name.toString(), added ? "" : text.toString(), status);
                    case CUSTOM_CALL -> OutputItems.customCall(id, callId, name.toString(), added ? "" : CustomTools.input(text.toString()));
                };
            }
        }

        /**
         * Writes the Responses events of one stream: sequence numbers, lifecycle events with the full response object,
         * items added in output order, their parts and deltas, items done. Events collect until {@link #drain}.
         */
        static final class ResponseEventWriter {
            private final ObjectNode request;
            private final IdClock clock;
            private final String responseId;
            private long createdAt;
            private String model;
            private int sequence;
            private final List<StreamItem> items = new ArrayList<>();
            private List<ObjectNode> out = new ArrayList<>();

            ResponseEventWriter(ObjectNode request, IdClock clock) {
                this.request = request;
                this.clock = clock;
                this.responseId = clock.id("resp_");
            }

            List<ObjectNode> drain() {
                List<ObjectNode> events = out;
                out = new ArrayList<>();
                return events;
            }

            void start(long createdAt, String model) {
                this.createdAt = createdAt;
                this.model = model;
                event("response.created").set("response", snapshot("in_progress"));
                event("response.in_progress").set("response", snapshot("in_progress"));
            }

            /** {@code response.completed}, or {@code response.incomplete} with the reason the answer stopped. */
            void end(String incompleteReason, JsonNode chatUsage) {
                ObjectNode r = snapshot("completed");
                if (incompleteReason != null) ResponseObject.incomplete(r, incompleteReason);
                if (chatUsage != null) r.set("usage", Usage.toResponses(chatUsage));
                event(incompleteReason != null ? "response.incomplete" : "response.completed").set("response", r);
            }

            /** {@code response.failed}: the items done so far and the open one as incomplete, and the error. */
            void fail(String message, StreamItem open, JsonNode chatUsage) {
                ObjectNode r = snapshot("failed");
                if (open != null) r.withArray("output").add(open.json(State.INCOMPLETE));
                ObjectNode error = r.putObject("error");
                error.put("code", "server_error");
                error.put("message", message);
                if (chatUsage != null) r.set("usage", Usage.toResponses(chatUsage));
                event("response.failed").set("response", r);
            }

            void add(StreamItem item) {
                if (item.kind.isCall() && item.callId.isEmpty()) item.callId = clock.id("call_");
                item.id = clock.id(item.kind.idPrefix);
                item.outputIndex = items.size();
                items.add(item);
                event("response.output_item.added").put("output_index", item.outputIndex).set("item", item.json(State.ADDED));
            }

            /** A held item, whole: added, then its part and one delta with all its text. */
            void replay(StreamItem item) {
                add(item);
                String text = item.text.toString();
                if (text.isEmpty()) return;
                switch (item.kind) {
                    case REASONING -> summaryDelta(item, text);
                    case MESSAGE -> textDelta(item, text);
                    case FUNCTION_CALL -> argumentsDelta(item, text);
                    case CUSTOM_CALL -> { }
                }
            }

            void summaryDelta(StreamItem r, String s) {
                if (!r.partOpen) {
                    r.partOpen = true;
                    summaryEvent("response.reasoning_summary_part.added", r).set("part", OutputItems.summaryPart(""));
                }
                summaryEvent("response.reasoning_summary_text.delta", r).put("delta", s);
            }

            void textDelta(StreamItem m, String s) {
                if (!m.partOpen) {
                    m.partOpen = true;
                    partEvent("response.content_part.added", m, 0).set("part", OutputItems.textPart(""));
                }
                partEvent("response.output_text.delta", m, 0).put("delta", s).putArray("logprobs");
            }

            void argumentsDelta(StreamItem call, String s) {
                itemEvent("response.function_call_arguments.delta", call).put("delta", s);
            }

            void close(StreamItem item, State state) {
                switch (item.kind) {
                    case REASONING -> closeReasoning(item);
                    case MESSAGE -> closeMessage(item);
                    case FUNCTION_CALL -> {
                        if (item.text.length() == 0) {
                            item.text.append("{}");
                            argumentsDelta(item, "{}");
                        }
                        itemEvent("response.function_call_arguments.done", item).put("arguments", item.text.toString());
                    }
                    case CUSTOM_CALL -> {
                        String input = CustomTools.input(item.text.toString());
                        if (!input.isEmpty()) itemEvent("response.custom_tool_call_input.delta", item).put("delta", input);
                        itemEvent("response.custom_tool_call_input.done", item).put("input", input);
                    }
                }
                item.done = item.json(state);
                event("response.output_item.done").put("output_index", item.outputIndex).set("item", item.done.deepCopy());
            }

            private void closeReasoning(StreamItem r) {
                if (!r.partOpen) return;
                summaryEvent("response.reasoning_summary_text.done", r).put("text", r.text.toString());
                summaryEvent("response.reasoning_summary_part.done", r).set("part", OutputItems.summaryPart(r.text.toString()));
            }

            /** The text part (opened now if no text came, unless the message is only a refusal), then the refusal part. */
            private void closeMessage(StreamItem m) {
                String text = m.text.toString();
                String refusal = m.extra.toString();
                if (!m.partOpen && (refusal.isEmpty() || !text.isEmpty())) {
                    m.partOpen = true;
                    partEvent("response.content_part.added", m, 0).set("part", OutputItems.textPart(""));
                }
                if (m.partOpen) {
                    partEvent("response.output_text.done", m, 0).put("text", text).putArray("logprobs");
                    partEvent("response.content_part.done", m, 0).set("part", OutputItems.textPart(text));
                }
                if (refusal.isEmpty()) return;
                int index = m.partOpen ? 1 : 0;
                partEvent("response.content_part.added", m, index).set("part", OutputItems.refusalPart(""));
                partEvent("response.refusal.delta", m, index).put("delta", refusal);
                partEvent("response.refusal.done", m, index).put("refusal", refusal);
                partEvent("response.content_part.done", m, index).set("part", OutputItems.refusalPart(refusal));
            }

            private ObjectNode snapshot(String status) {
                ObjectNode r = ResponseObject.build(request, responseId, createdAt, model, status);
                ArrayNode output = r.withArray("output");
                if (!status.equals("in_progress")) for (StreamItem item : items) if (item.done != null) output.add(item.done.deepCopy());
                return r;
            }

            private ObjectNode event(String type) {
                ObjectNode e = object();
                e.put("type", type);
                e.put("sequence_number", sequence++);
                out.add(e);
                return e;
            }

            private ObjectNode itemEvent(String type, StreamItem item) {
                ObjectNode e = event(type);
                e.put("item_id", item.id);
                e.put("output_index", item.outputIndex);
                return e;
            }

            private ObjectNode partEvent(String type, StreamItem item, int contentIndex) {
                return itemEvent(type, item).put("content_index", contentIndex);
            }

            private ObjectNode summaryEvent(String type, StreamItem item) {
                return itemEvent(type, item).put("summary_index", 0);
            }
        }

        // Responses: Chat request in, Responses request out (responses-only models)

        /**
         * Chat requests (inbound chat, or Anthropic translated to chat) to Responses requests for models Copilot serves
         * only on {@code /responses}.
         *
         * <p>Leading system and developer messages become {@code instructions} (joined by blank lines), which is where
         * Responses models expect their system prompt; system messages later in the conversation become {@code developer}
         * message items at their place, so their order is kept. Requests always say {@code store: false} and ask for
         * {@code reasoning.encrypted_content}: a chat request carries its whole conversation and nothing of it is stored,
         * so reasoning can only come back in later turns through {@link ReasoningOpaque}.
         */
        static final class ChatToResponsesRequest {
            private static final List<String> HANDLED = List.of("model", "messages", "tools", "tool_choice", "parallel_tool_calls",
                "max_tokens", "max_completion_tokens", "reasoning_effort", "thinking_budget", "response_format", "verbosity",
                "stream", "user", "n");
            private static final Map<String, String> IGNORED = Map.ofEntries(
                Map.entry("temperature", "reasoning models of the Responses API reject sampling settings"),
                Map.entry("top_p", "reasoning models of the Responses API reject sampling settings"),
                Map.entry("stop", "the Responses API has no stop sequences"),
                Map.entry("stream_options", "usage is always reported"),
                Map.entry("logprobs", "log probabilities are not translated"),
                Map.entry("top_logprobs", "log probabilities are not translated"),
                Map.entry("seed", "the Responses API has no seed"),
                Map.entry("frequency_penalty", "the Responses API has no penalties"),
                Map.entry("presence_penalty", "the Responses API has no penalties"),
                Map.entry("logit_bias", "the Responses API has no logit bias"),
                Map.entry("metadata", "nothing is stored (store: false)"),
                Map.entry("store", "copilot-api always sends store: false"),
                Map.entry("service_tier", "Copilot has one service tier"),
                Map.entry("prompt_cache_key", "not forwarded to Copilot"));
            static final int MIN_OUTPUT_TOKENS = 16;

            static Translated request(ObjectNode chat) {
                List<String> notes = new ArrayList<>();
                reject(chat);
                ObjectNode out = object();
                if (chat.has("model")) out.set("model", chat.get("model").deepCopy());
                Messages m = new Messages(notes);
                JsonNode messages = chat.path("messages");
                if (!messages.isArray() || messages.isEmpty()) throw invalid("messages", "'messages' must be a non-empty array");
                m.addAll(ToolCallIds.paired(messages));
                if (m.instructions.length() > 0) out.put("instructions", m.instructions.toString());
                out.set("input", m.input);
                tools(chat, out, notes);
                limits(chat, out, notes);
                out.put("store", false);
                out.putArray("include").add("reasoning.encrypted_content");
                if (chat.path("stream").asBoolean(false)) out.put("stream", true);
                if (chat.path("user").isTextual()) out.set("user", chat.get("user"));
                chat.fieldNames().forEachRemaining(f -> {
                    if (HANDLED.contains(f) || chat.get(f).isNull()) return;
                    notes.add("dropped '" + f + "': " + IGNORED.getOrDefault(f, "not supported by the Responses API"));
                });
                return new Translated(out, notes);
            }

            private static void reject(JsonNode chat) {
                if (chat.path("n").asInt(1) > 1) throw invalid("n", "'n' greater than 1 is not supported for this model: the Responses API returns one answer");
                if (chat.has("functions") || chat.has("function_call")) {
                    throw invalid("functions", "the deprecated 'functions' and 'function_call' are not supported for this model; use 'tools' and 'tool_choice'");
                }
                for (String f : List.of("audio", "modalities", "prediction")) {
                    JsonNode v = chat.path(f);
                    if (!v.isMissingNode() && !v.isNull() && !(f.equals("modalities") && v.size() == 1 && v.get(0).asText().equals("text"))) {
                        throw invalid(f, "'" + f + "' is not supported for this model");
                    }
                }
            }

            private static void tools(JsonNode chat, ObjectNode out, List<String> notes) {
                ArrayNode tools = array();
                for (JsonNode t : chat.path("tools")) {
                    String type = t.path("type").asText("function");
                    if (type.equals("function")) {
                        tools.add(flatFunction(t.path("function")));
                    } else if (type.equals("custom")) {
                        JsonNode c = t.path("custom");
                        ObjectNode fn = CustomTools.asFunction(c.path("name").asText(""), c.path("description").asText(null), c.path("format"));
                        tools.add(flatFunction(fn));
                        notes.add("custom tool '" + c.path("name").asText() + "' offered as a function with one string parameter 'input'");
                    } else {
                        notes.add("dropped tool of type '" + type + "'");
                    }
                }
                if (tools.isEmpty()) return;
                out.set("tools", tools);
                JsonNode choice = chat.path("tool_choice");
                if (choice.isTextual()) out.set("tool_choice", choice);
                else if (choice.isObject()) out.set("tool_choice", toolChoice(choice, notes));
                if (chat.path("parallel_tool_calls").isBoolean()) out.set("parallel_tool_calls", chat.get("parallel_tool_calls"));
            }

            /** A chat function as a flat Responses tool; strict is false unless asked, since the Responses API defaults to true. */
            private static ObjectNode flatFunction(JsonNode fn) {
                ObjectNode t = object();
                t.put("type", "function");
                t.put("name", fn.path("name").asText(""));
                if (fn.path("description").isTextual()) t.set("description", fn.get("description"));
                t.set("parameters", fn.path("parameters").isObject() ? fn.get("parameters").deepCopy() : emptySchema());
                t.put("strict", fn.path("strict").asBoolean(false));
                return t;
            }

            private static JsonNode toolChoice(JsonNode choice, List<String> notes) {
                String type = choice.path("type").asText("");
                String name = choice.path(type).path("name").asText("");
                if ((type.equals("function") || type.equals("custom")) && !name.isEmpty()) {
                    ObjectNode c = object();
                    c.put("type", "function");
                    c.put("name", name);
                    return c;
                }
                String mode = choice.path("allowed_tools").path("mode").asText("auto");
                notes.add("'tool_choice' of type '" + type + "' sent as '" + mode + "'");
                return JSON.getNodeFactory().textNode(mode);
            }

            private static void limits(JsonNode chat, ObjectNode out, List<String> notes) {
                JsonNode max = chat.path("max_completion_tokens").isNumber() ? chat.get("max_completion_tokens") : chat.path("max_tokens");
                if (max.isNumber()) {
                    int n = max.asInt();
                    if (n < MIN_OUTPUT_TOKENS) notes.add("max tokens " + n + " raised to " + MIN_OUTPUT_TOKENS + ", the Responses API minimum");
                    out.put("max_output_tokens", Math.max(n, MIN_OUTPUT_TOKENS));
                }
                ObjectNode reasoning = out.putObject("reasoning");
                if (chat.path("reasoning_effort").isTextual()) {
                    reasoning.put("effort", chat.path("reasoning_effort").asText());
                } else if (chat.path("thinking_budget").isNumber()) {
                    String effort = effortFor(chat.path("thinking_budget").asInt());
                    reasoning.put("effort", effort);
                    notes.add("'thinking_budget' " + chat.path("thinking_budget").asInt() + " sent as reasoning effort '" + effort + "'");
                }
                reasoning.put("summary", "auto");
                JsonNode rf = chat.path("response_format");
                String rfType = rf.path("type").asText("");
                if (rfType.equals("json_schema")) {
                    ObjectNode format = out.putObject("text").putObject("format");
                    format.put("type", "json_schema");
                    JsonNode js = rf.path("json_schema");
                    for (String f : List.of("name", "description", "schema", "strict")) if (js.has(f)) format.set(f, js.get(f).deepCopy());
                } else if (rfType.equals("json_object") || rfType.equals("text")) {
                    out.putObject("text").putObject("format").put("type", rfType);
                }
                if (chat.path("verbosity").isTextual()) out.withObjectProperty("text").set("verbosity", chat.get("verbosity"));
            }

            /** A Claude-style thinking budget as an effort level: below 4k low, below 16k medium, else high. */
            static String effortFor(int budget) {
                return budget < 4096 ? "low" : budget < 16384 ? "medium" : "high";
            }

            /**
             * Tool calls sent without an id, and results sent without a tool_call_id: chat clients that pair them by order
             * (an assistant message's calls, then one tool message for each). /responses pairs a function_call with its
             * output by call_id only, so each such pair gets one: the id the result names if it names one, else one derived
             * from the call and its place, the same whenever the conversation is sent again (the prompt cache keeps hitting).
             * Pairing by order is unambiguous only when the calls without id and the results naming none of the message's
             * calls are as many; otherwise, or for a result that follows no call, a 400 naming the field, as OpenAI's is.
             */
            static final class ToolCallIds {
                private ToolCallIds() {}

                /** The messages with every call and result paired by id; the same array when nothing was missing. */
                static JsonNode paired(JsonNode messages) {
                    ArrayNode copy = null;
                    int i = 0;
                    while (i < messages.size()) {
                        JsonNode m = messages.get(i);
                        if (!m.path("role").asText("").equals("assistant") || m.path("tool_calls").isEmpty()) {
                            if (isTool(m) && missing(m.path("tool_call_id"))) throw unpaired("messages[" + i + "].tool_call_id",
                                "the tool message follows no tool call");
                            i++;
                            continue;
                        }
                        int end = i + 1;
                        while (end < messages.size() && isTool(messages.get(end))) end++;
                        copy = pairRun(messages, copy, i, end);
                        i = end;
                    }
                    return copy == null ? messages : copy;
                }

                /** The calls of the assistant message at index call and the tool messages from call + 1 to end. */
                private static ArrayNode pairRun(JsonNode messages, ArrayNode copy, int call, int end) {
                    JsonNode calls = messages.get(call).path("tool_calls");
                    List<Integer> idless = new ArrayList<>();
                    Set<String> ids = new HashSet<>();
                    for (int k = 0; k < calls.size(); k++) {
                        if (missing(calls.get(k).path("id"))) idless.add(k);
                        else ids.add(calls.get(k).path("id").asText());
                    }
                    List<Integer> orphans = new ArrayList<>();
                    for (int j = call + 1; j < end; j++) {
                        JsonNode id = messages.get(j).path("tool_call_id");
                        if (missing(id) || (!idless.isEmpty() && !ids.contains(id.asText()))) orphans.add(j);
                    }
                    if (idless.isEmpty() && orphans.isEmpty()) return copy;
                    if (idless.size() != orphans.size()) {
                        if (idless.isEmpty()) throw unpaired("messages[" + orphans.get(0) + "].tool_call_id",
                            "the tool message names no tool call, and every tool call before it has an id");
                        throw unpaired("messages[" + call + "].tool_calls[" + idless.get(0) + "].id", "the assistant message has "
                            + idless.size() + " tool call(s) without an id but " + orphans.size() + " tool message(s) after it that answer none of its calls");
                    }
                    ArrayNode out = copy != null ? copy : (ArrayNode) messages.deepCopy();
                    for (int n = 0; n < idless.size(); n++) {
                        int k = idless.get(n);
                        JsonNode tc = calls.get(k);
                        if (!tc.isObject()) throw invalid("messages[" + call + "].tool_calls[" + k + "]", "a tool call must be an object");
                        JsonNode named = messages.get(orphans.get(n)).path("tool_call_id");
                        String id = missing(named) ? Ids.derived("call_", "chat tool call " + call + "." + k, tc) : named.asText();
                        ((ObjectNode) out.get(call).get("tool_calls").get(k)).put("id", id);
                        ((ObjectNode) out.get(orphans.get(n))).put("tool_call_id", id);
                    }
                    return out;
                }

                private static boolean isTool(JsonNode m) {
                    return m.path("role").asText("").equals("tool");
                }

                private static boolean missing(JsonNode id) {
                    return !id.isTextual() || id.asText().isEmpty();
                }

                private static ApiError unpaired(String field, String why) {
                    return invalid(field, "Missing required parameter: '" + field + "' (" + why + ")");
                }
            }

            /** Chat messages to instructions and input items. */
            private static final class Messages {
                final StringBuilder instructions = new StringBuilder();
                final ArrayNode input = array();
                private final List<String> notes;
                private boolean leading = true;

                Messages(List<String> notes) {
                    this.notes = notes;
                }

                void addAll(JsonNode messages) {
                    for (JsonNode m : messages) add(m);
                }

                private void add(JsonNode m) {
                    String role = m.path("role").asText("");
                    switch (role) {
                        case "system", "developer" -> system(ResponsesToChat.plainText(textContent(m.path("content")), "messages"));
                        case "user" -> {
                            leading = false;
                            input.add(message("user", userParts(m.path("content"))));
                        }
                        case "assistant" -> {
                            leading = false;
                            assistant(m);
                        }
                        case "tool" -> {
                            leading = false;
                            ObjectNode o = input.addObject();
                            o.put("type", "function_call_output");
                            o.put("call_id", m.path("tool_call_id").asText(""));
                            o.set("output", toolOutput(m.path("content")));
                        }
                        default -> throw invalid("messages", "unknown message role '" + role + "'");
                    }
                }

                private void system(String text) {
                    if (text.isEmpty()) return;
                    if (leading) {
                        if (instructions.length() > 0) instructions.append("\n\n");
                        instructions.append(text);
                        return;
                    }
                    ArrayNode parts = array();
                    parts.addObject().put("type", "input_text").put("text", text);
                    input.add(message("developer", parts));
                }

                private void assistant(JsonNode m) {
                    reasoning(m);
                    ArrayNode parts = array();
                    String text = textOf(m.path("content"));
                    if (!text.isEmpty()) parts.addObject().put("type", "output_text").put("text", text).putArray("annotations");
                    if (m.path("refusal").isTextual() && !m.path("refusal").asText().isEmpty()) {
                        parts.addObject().put("type", "refusal").put("refusal", m.path("refusal").asText());
                    }
                    if (!parts.isEmpty()) input.add(message("assistant", parts));
                    for (JsonNode tc : m.path("tool_calls")) {
                        ObjectNode o = input.addObject();
                        o.put("type", "function_call");
                        o.put("call_id", tc.path("id").asText(""));
                        boolean custom = tc.path("type").asText("").equals("custom");
                        o.put("name", (custom ? tc.path("custom") : tc.path("function")).path("name").asText(""));
                        o.put("arguments", custom ? CustomTools.arguments(tc.path("custom").path("input").asText(""))
                            : nonEmpty(tc.path("function").path("arguments").asText(""), "{}"));
                    }
                }

                /** reasoning_opaque made by {@link ReasoningOpaque#encode} restores the reasoning items, ids and all. */
                private void reasoning(JsonNode m) {
                    String opaque = m.path("reasoning_opaque").asText("");
                    String text = m.path("reasoning_text").asText("");
                    List<ReasoningOpaque.Entry> entries = ReasoningOpaque.decode(opaque);
                    if (entries.isEmpty()) {
                        if (!opaque.isEmpty() || !text.isEmpty()) {
                            notes.add("dropped assistant reasoning that did not come from a Responses model; it cannot be verified");
                        }
                        return;
                    }
                    for (int i = 0; i < entries.size(); i++) {
                        ObjectNode r = input.addObject();
                        r.put("type", "reasoning");
                        r.put("id", entries.get(i).id());
                        ArrayNode summary = r.putArray("summary");
                        if (i == 0 && !text.isEmpty()) summary.add(OutputItems.summaryPart(text));
                        r.put("encrypted_content", entries.get(i).encryptedContent());
                    }
                }

                private ArrayNode userParts(JsonNode content) {
                    ArrayNode parts = array();
                    if (content.isTextual()) {
                        parts.addObject().put("type", "input_text").put("text", content.asText());
                        return parts;
                    }
                    for (JsonNode part : content) parts.add(inputPart(part));
                    return parts;
                }

                private JsonNode toolOutput(JsonNode content) {
                    if (content.isTextual()) return content;
                    boolean onlyText = true;
                    for (JsonNode part : content) onlyText &= part.path("type").asText("text").equals("text");
                    if (onlyText) return JSON.getNodeFactory().textNode(textOf(content));
                    ArrayNode parts = array();
                    for (JsonNode part : content) parts.add(inputPart(part));
                    return parts;
                }

                private static ObjectNode inputPart(JsonNode part) {
                    String type = part.path("type").asText("");
                    ObjectNode p = object();
                    switch (type) {
                        case "text" -> p.put("type", "input_text").put("text", part.path("text").asText(""));
                        case "image_url" -> {
                            JsonNode url = part.path("image_url");
                            p.put("type", "input_image");
                            p.put("image_url", url.isTextual() ? url.asText() : url.path("url").asText(""));
                            p.put("detail", url.path("detail").asText("auto"));
                        }
                        case "file" -> {
                            JsonNode f = part.path("file");
                            p.put("type", "input_file");
                            for (String field : List.of("file_data", "file_id", "filename")) if (f.has(field)) p.set(field, f.get(field));
                        }
                        default -> throw invalid("messages", "content parts of type '" + type + "' are not supported for this model");
                    }
                    return p;
                }

                private static ObjectNode message(String role, ArrayNode content) {
                    ObjectNode o = object();
                    o.put("type", "message");
                    o.put("role", role);
                    o.set("content", content);
                    return o;
                }

                private static JsonNode textContent(JsonNode content) {
                    return content.isMissingNode() || content.isNull() ? JSON.getNodeFactory().textNode("") : content;
                }

                private static String textOf(JsonNode content) {
                    if (content.isTextual()) return content.asText();
                    List<String> texts = new ArrayList<>();
                    for (JsonNode part : content) if (part.path("text").isTextual()) texts.add(part.path("text").asText());
                    return String.join("\n", texts);
                }
            }
        }

        // Responses: Responses stream in, chat chunks out (responses-only models)

        /**
         * Responses events to chat chunks, one instance per request. Feed every upstream event to {@link #onEvent};
         * call {@link #finish} at the end of the upstream stream.
         *
         * <p>Chunks: {@code role} on the first delta; summary text as {@code reasoning_text} deltas (parts and items
         * separated by a blank line); one {@code reasoning_opaque} delta per reasoning item when it is done (see
         * {@link ReasoningOpaque}; consumers concatenate them); text as {@code content}; each call with {@code id},
         * {@code type: "function"} and {@code name} on its first fragment, then argument deltas, indexed 0.. in order
         * of appearance (custom calls as arguments {@code {"input": ...}}); last, on {@code response.completed} or
         * {@code response.incomplete}, a chunk with the finish_reason and, when asked, a chunk with the usage.
         *
         * <p>Failures: on {@code response.failed}, an {@code error} event, or an upstream stream that ends without a
         * terminal event, {@link #failure()} holds the message and no more chunks are produced; the caller then ends
         * its chat stream with an error.
         */
        static final class ResponsesStreamToChat {
            private final String requestedModel;
            private final boolean includeUsage;
            private final IdClock clock;
            private String id;
            private long created;
            private String model;
            private boolean roleSent;
            private boolean ended;
            private String failure;
            private final Map<String, Call> calls = new HashMap<>();
            private final Set<String> textItems = new java.util.HashSet<>();
            private final Set<String> summaryItems = new java.util.HashSet<>();
            private String lastSummaryPart;
            private boolean anyReasoningText;
            private ObjectNode usage;

            ResponsesStreamToChat(String requestedModel, boolean includeUsage, IdClock clock) {
                this.requestedModel = requestedModel;
                this.includeUsage = includeUsage;
                this.clock = clock;
            }

            Optional<String> failure() {
                return Optional.ofNullable(failure);
            }

            /** The usage of the terminal event in chat shape, for logs and stats even when the client did not ask for it. */
            Optional<ObjectNode> usage() {
                return Optional.ofNullable(usage);
            }

            /** True once the terminal event was seen (or a failure), after which events are ignored. */
            boolean ended() {
                return ended;
            }

            List<ObjectNode> onEvent(String eventName, JsonNode data) {
                List<ObjectNode> out = new ArrayList<>();
                if (ended) return out;
                String type = eventName != null && !eventName.isEmpty() ? eventName : data.path("type").asText("");
                switch (type) {
                    case "response.created", "response.in_progress" -> remember(data.path("response"));
                    case "response.output_item.added" -> itemAdded(data.path("item"), data.path("output_index").asInt(-1), out);
                    case "response.output_text.delta" -> text(data, "content", out);
                    case "response.refusal.delta" -> text(data, "refusal", out);
                    case "response.reasoning_summary_text.delta" -> summary(data.path("item_id").asText("") + "#"
                        + data.path("summary_index").asInt(0), data.path("item_id").asText(""), data.path("delta").asText(""), out);
                    case "response.function_call_arguments.delta", "response.custom_tool_call_input.delta" ->
                        call(data).ifPresent(c -> c.append(data.path("delta").asText(""), out));
                    case "response.output_item.done" -> itemDone(data.path("item"), data.path("output_index").asInt(-1), out);
                    case "response.completed", "response.incomplete" -> complete(data.path("response"), out);
                    case "response.failed" -> fail(data.path("response").path("error").path("message").asText("the upstream response failed"));
                    case "error" -> fail(data.path("message").asText(data.path("error").path("message").asText("upstream error")));
                    default -> { }
                }
                return out;
            }

            /** At the end of the upstream stream; a stream without a terminal event is a failure. */
            List<ObjectNode> finish() {
                if (!ended) fail("the upstream stream ended before the response was complete");
                return new ArrayList<>();
            }

            private void fail(String message) {
                failure = message;
                ended = true;
            }

            private void remember(JsonNode response) {
                if (id == null && response.path("id").isTextual()) id = ResponsesToChat.chatId(response.path("id").asText());
                if (created == 0) created = response.path("created_at").asLong(0);
                if (model == null && response.path("model").isTextual()) model = response.path("model").asText();
            }

            private void itemAdded(JsonNode item, int outputIndex, List<ObjectNode> out) {
                String type = item.path("type").asText("");
                if (type.equals("function_call") || type.equals("custom_tool_call")) openCall(item, outputIndex, out);
            }

            /** A text or refusal delta; the item is remembered so that its done event does not repeat the text. */
            private void text(JsonNode data, String field, List<ObjectNode> out) {
                textItems.add(data.path("item_id").asText(""));
                String s = data.path("delta").asText("");
                if (!s.isEmpty()) delta(out).put(field, s);
            }

            private void summary(String part, String itemId, String s, List<ObjectNode> out) {
                summaryItems.add(itemId);
                if (s.isEmpty()) return;
                String text = anyReasoningText && !part.equals(lastSummaryPart) ? "\n\n" + s : s;
                lastSummaryPart = part;
                anyReasoningText = true;
                delta(out).put("reasoning_text", text);
            }

            private void itemDone(JsonNode item, int outputIndex, List<ObjectNode> out) {
                String itemId = item.path("id").asText("");
                switch (item.path("type").asText("")) {
                    case "reasoning" -> {
                        if (!summaryItems.contains(itemId)) {
                            List<String> texts = ResponsesToChat.summaryTexts(item);
                            for (int i = 0; i < texts.size(); i++) summary(itemId + "#" + i, itemId, texts.get(i), out);
                        }
                        if (item.path("encrypted_content").isTextual() && !itemId.isEmpty()) {
                            delta(out).put("reasoning_opaque", ReasoningOpaque.encode(itemId, item.path("encrypted_content").asText()));
                        }
                    }
                    case "message" -> {
                        if (textItems.contains(itemId)) return;
                        StringBuilder text = new StringBuilder();
                        StringBuilder refusal = new StringBuilder();
                        ResponsesToChat.messageText(item, text, refusal);
                        if (text.length() > 0) delta(out).put("content", text.toString());
                        if (refusal.length() > 0) delta(out).put("refusal", refusal.toString());
                    }
                    case "function_call", "custom_tool_call" -> {
                        Call c = call(itemId, outputIndex).orElseGet(() -> openCall(item, outputIndex, out));
                        c.complete(item, out);
                    }
                    default -> { }
                }
            }

            private void complete(JsonNode response, List<ObjectNode> out) {
                remember(response);
                ObjectNode c = envelope();
                ObjectNode choice = c.putArray("choices").addObject();
                choice.put("index", 0);
                ObjectNode d = choice.putObject("delta");
                if (!roleSent) {
                    d.put("role", "assistant");
                    d.put("content", "");
                    roleSent = true;
                }
                choice.putNull("logprobs");
                choice.put("finish_reason", ResponsesToChat.finishReason(response, !calls.isEmpty()));
                out.add(c);
                if (response.path("usage").isObject()) usage = Usage.toChat(response.get("usage"));
                if (includeUsage && usage != null) {
                    ObjectNode u = envelope();
                    u.putArray("choices");
                    u.set("usage", usage.deepCopy());
                    out.add(u);
                }
                ended = true;
            }

            private Call openCall(JsonNode item, int outputIndex, List<ObjectNode> out) {
                Call c = new Call(calls.size(), item.path("type").asText("").equals("custom_tool_call"));
                calls.put(item.path("id").asText(""), c);
                if (outputIndex >= 0) calls.put("#" + outputIndex, c);
                ObjectNode tc = object();
                tc.put("index", c.index);
                tc.put("id", item.path("call_id").asText("").isEmpty() ? clock.id("call_") : item.path("call_id").asText());
                tc.put("type", "function");
                ObjectNode fn = tc.putObject("function");
                fn.put("name", item.path("name").asText(""));
                fn.put("arguments", c.custom ? "{\"" + CustomTools.PARAMETER + "\":\"" : "");
                delta(out).putArray("tool_calls").add(tc);
                return c;
            }

            private Optional<Call> call(JsonNode data) {
                return call(data.path("item_id").asText(""), data.path("output_index").asInt(-1));
            }

            private Optional<Call> call(String itemId, int outputIndex) {
                Call c = calls.get(itemId);
                if (c == null && outputIndex >= 0) c = calls.get("#" + outputIndex);
                return Optional.ofNullable(c);
            }

            private ObjectNode delta(List<ObjectNode> out) {
                ObjectNode c = envelope();
                ObjectNode choice = c.putArray("choices").addObject();
                choice.put("index", 0);
                ObjectNode d = choice.putObject("delta");
                if (!roleSent) {
                    d.put("role", "assistant");
                    roleSent = true;
                }
                choice.putNull("logprobs");
                choice.putNull("finish_reason");
                out.add(c);
                return d;
            }

            private ObjectNode envelope() {
                if (id == null) id = clock.id("chatcmpl-");
                if (created == 0) created = clock.epochSeconds();
                ObjectNode c = object();
                c.put("id", id);
                c.put("object", "chat.completion.chunk");
                c.put("created", created);
                c.put("model", requestedModel != null ? requestedModel : model == null ? "" : model);
                return c;
            }

            /** One tool call on the chat side: its index and what of its arguments (or custom input) was sent. */
            private final class Call {
                final int index;
                final boolean custom;
                final StringBuilder sent = new StringBuilder();
                boolean closed;

                Call(int index, boolean custom) {
                    this.index = index;
                    this.custom = custom;
                }

                void append(String s, List<ObjectNode> out) {
                    if (s.isEmpty() || closed) return;
                    sent.append(s);
                    argumentsDelta(custom ? escaped(s) : s, out);
                }

                /** Sends what the done item has beyond the streamed deltas, then closes a custom call's JSON. */
                void complete(JsonNode item, List<ObjectNode> out) {
                    if (closed) return;
                    String full = item.path(custom ? "input" : "arguments").asText("");
                    if (full.startsWith(sent.toString())) append(full.substring(sent.length()), out);
                    if (custom) argumentsDelta("\"}", out);
                    else if (sent.length() == 0) argumentsDelta("{}", out);
                    closed = true;
                }

                private void argumentsDelta(String s, List<ObjectNode> out) {
                    ObjectNode tc = object();
                    tc.put("index", index);
                    tc.putObject("function").put("arguments", s);
                    delta(out).putArray("tool_calls").add(tc);
                }

                private String escaped(String s) {
                    String json = Json.write(JSON.getNodeFactory().textNode(s));
                    return json.substring(1, json.length() - 1);
                }
            }
        }

        // Responses: small helpers

        static ObjectNode object() {
            return Json.object();
        }

        static ArrayNode array() {
            return Json.array();
        }

        static ObjectNode typeOnly(String type) {
            ObjectNode o = object();
            o.put("type", type);
            return o;
        }

        static ObjectNode emptySchema() {
            ObjectNode s = object();
            s.put("type", "object");
            s.putObject("properties");
            return s;
        }

        static boolean present(JsonNode node, String field) {
            return !node.path(field).isMissingNode() && !node.path(field).isNull();
        }

        static String nonEmpty(String s, String fallback) {
            return s == null || s.isEmpty() ? fallback : s;
        }

        static ApiError invalid(String param, String message) {
            return new ApiError(400, "invalid_request_error", message, param, null);
        }
    }

    // ==== 5.4 Gemini: generateContent to chat and back, the stream machine, model views, Google's error shape ====

    /** The Gemini API (generateContent): to chat completions and back, streamed and not, the model list, Google's errors. */
    static final class Gemini {
        private Gemini() {
        }

        /** Gemini CLI's stand-in where it holds no real thought signature: it means nothing to Copilot and is never sent. */
        static final String PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator";

        /**
         * A thought signature carries the reasoning whole: Copilot's opaque signature (a Claude thinking signature, or a
         * responses-only model's encrypted reasoning) and, when there was one, the thinking text it signs, because Gemini
         * CLI keeps no thought parts in its history and Copilot wants the text beside its signature. A signature without
         * the prefix is Copilot's own and goes back as it came.
         */
        static final class ThoughtSignatures {
            static final String PREFIX = "copilot-api.1.";

            static String pack(String text, String opaque) {
                if (text.isEmpty()) return opaque;
                ObjectNode o = Json.object().put("text", text).put("opaque", opaque);
                return PREFIX + Base64.getUrlEncoder().withoutPadding().encodeToString(Json.write(o).getBytes(UTF_8));
            }

            /** The thinking text (empty when none) and the opaque signature; the placeholder or a broken one: empty. */
            static Optional<String[]> unpack(String signature) {
                if (signature == null || signature.isEmpty() || signature.equals(PLACEHOLDER_SIGNATURE)) return Optional.empty();
                if (!signature.startsWith(PREFIX)) return Optional.of(new String[] {"", signature});
                try {
                    JsonNode o = JSON.readTree(Base64.getUrlDecoder().decode(signature.substring(PREFIX.length())));
                    String opaque = o.path("opaque").asText("");
                    return opaque.isEmpty() ? Optional.empty() : Optional.of(new String[] {o.path("text").asText(""), opaque});
                } catch (IOException | IllegalArgumentException e) {
                    return Optional.empty();
                }
            }
        }

        static ApiError invalid(String field, String message) {
            return new ApiError(400, "invalid_request_error", "Invalid value at '" + field + "': " + message, field, null);
        }

        /**
         * A GenerateContentRequest to a chat request. One instance per call holds the notes and the function calls of the
         * model turn before, so that each functionResponse answers its call: by id, else by name (a call sent without an
         * id gets a stable one from its place in the conversation, the same on every turn).
         */
        static final class GeminiToChat {
            /**
             * {@code includeThoughts}: the client asked to see thought parts; {@code notes}: what was dropped or changed
             * (debug); {@code dropped}: the built-in tools Copilot cannot run (worth an info line).
             */
            record Result(ObjectNode chatRequest, boolean vision, boolean includeThoughts, List<String> notes, List<String> dropped) {}

            /** How the model is asked to think: a budget (catalog min/max), an effort level, or not at all. */
            record Reasoning(ModelLimits limits, boolean byEffort) {}

            static final Set<String> READ_KEYS = Set.of("model", "contents", "systemInstruction", "tools", "toolConfig",
                "generationConfig", "safetySettings");
            static final Set<String> SCHEMA_DROPPED = Set.of("propertyOrdering", "example", "nullable");

            private record Call(String id, String name) {}

            private final Reasoning reasoning;
            private final List<String> notes = new ArrayList<>();
            private final List<String> dropped = new ArrayList<>();
            private final List<Call> unanswered = new ArrayList<>();
            private boolean includeThoughts;

            private GeminiToChat(Reasoning reasoning) {
                this.reasoning = reasoning;
            }

            static Result request(JsonNode gemini, String upstreamModel, Reasoning reasoning, boolean stream) {
                return new GeminiToChat(reasoning).translate(gemini, upstreamModel, stream);
            }

            /** True when a tool of the request declares a function (built-in tools alone declare none). */
            static boolean declaresFunctions(JsonNode gemini) {
                for (JsonNode t : gemini.path("tools")) if (!t.path("functionDeclarations").isEmpty()) return true;
                return false;
            }

            private Result translate(JsonNode g, String upstreamModel, boolean stream) {
                JsonNode contents = g.get("contents");
                if (contents == null || contents.isNull()) throw invalid("contents", "is required");
                if (!contents.isArray() || contents.isEmpty()) throw invalid("contents", "must be a non-empty array of Content objects");
                ObjectNode chat = Json.object();
                chat.put("model", upstreamModel);
                ArrayNode out = chat.putArray("messages");
                String system = systemText(g.get("systemInstruction"));
                if (!system.isEmpty()) out.addObject().put("role", "system").put("content", system);
                for (int i = 0; i < contents.size(); i++) content(contents.get(i), "contents[" + i + "]", i, out);
                JsonNode config = g.path("generationConfig");
                if (!config.isMissingNode() && !config.isNull() && !config.isObject()) throw invalid("generationConfig", "must be an object");
                Integer maxTokens = generation(config, chat);
                thinking(config.path("thinkingConfig"), chat, maxTokens);
                tools(g, chat);
                chat.put("stream", stream);
                g.fieldNames().forEachRemaining(k -> {
                    if (!READ_KEYS.contains(k)) notes.add("ignored the field '" + k + "'");
                });
                return new Result(chat, Json.containsImage(out), includeThoughts, List.copyOf(notes), List.copyOf(dropped));
            }

            // ---- contents ----

            private void content(JsonNode c, String at, int turn, ArrayNode out) {
                if (!c.isObject()) throw invalid(at, "must be a Content object");
                String role = c.path("role").asText("user");
                if (!Set.of("model", "user", "function", "").contains(role)) throw invalid(at + ".role", "must be \"user\" or \"model\", not \"" + role + "\"");
                JsonNode parts = c.get("parts");
                if (parts == null || !parts.isArray() || parts.isEmpty()) throw invalid(at + ".parts", "must be a non-empty array of Part objects");
                for (int j = 0; j < parts.size(); j++) if (!parts.get(j).isObject()) throw invalid(at + ".parts[" + j + "]", "must be a Part object");
                if (role.equals("model")) modelTurn(parts, at, turn, out);
                else userTurn(parts, at, out);
            }

            /** Text to content, thought parts to reasoning_text, the first real thought signature to reasoning_opaque. */
            private void modelTurn(JsonNode parts, String at, int turn, ArrayNode out) {
                StringBuilder text = new StringBuilder();
                List<String> thoughts = new ArrayList<>();
                ArrayNode calls = Json.array();
                String[] signature = null;
                unanswered.clear();
                for (int j = 0; j < parts.size(); j++) {
                    JsonNode p = parts.get(j);
                    if (signature == null) signature = ThoughtSignatures.unpack(p.path("thoughtSignature").asText("")).orElse(null);
                    if (p.path("thought").asBoolean(false)) {
                        if (!p.path("text").asText("").isEmpty()) thoughts.add(p.path("text").asText());
                    } else if (p.has("text")) {
                        text.append(p.path("text").asText(""));
                    } else if (p.has("functionCall")) {
                        calls.add(toolCall(p.get("functionCall"), at + ".parts[" + j + "].functionCall", turn, j));
                    } else if (!p.has("thoughtSignature")) {
                        notes.add("dropped a " + kind(p) + " part from a model turn");
                    }
                }
                if (text.toString().isBlank() && calls.isEmpty()) {
                    if (!thoughts.isEmpty() || signature != null) notes.add("dropped a model turn that held only thoughts");
                    return;
                }
                ObjectNode m = out.addObject();
                m.put("role", "assistant");
                if (text.toString().isBlank()) m.putNull("content");
                else m.put("content", text.toString());
                if (!calls.isEmpty()) m.set("tool_calls", calls);
                String reasoningText = signature != null && !signature[0].isEmpty() ? signature[0] : String.join("\n\n", thoughts);
                if (!reasoningText.isEmpty()) m.put("reasoning_text", reasoningText);
                if (signature != null) m.put("reasoning_opaque", signature[1]);
            }

            private ObjectNode toolCall(JsonNode fc, String at, int turn, int part) {
                String name = fc.path("name").asText("");
                if (name.isBlank()) throw invalid(at + ".name", "is required");
                String id = fc.path("id").asText("");
                if (id.isBlank()) id = "call_" + turn + "_" + part;
                unanswered.add(new Call(id, name));
                JsonNode args = fc.get("args");
                if (args != null && !args.isNull() && !args.isObject()) throw invalid(at + ".args", "must be an object");
                ObjectNode call = Json.object();
                call.put("id", id);
                call.put("type", "function");
                call.putObject("function").put("name", name).put("arguments", args == null || args.isNull() ? "{}" : Json.write(args));
                return call;
            }

            /** Function responses first (one tool message each), then the rest as one user message. */
            private void userTurn(JsonNode parts, String at, ArrayNode out) {
                List<ObjectNode> toolImages = new ArrayList<>();
                List<ObjectNode> rest = new ArrayList<>();
                for (int j = 0; j < parts.size(); j++) {
                    JsonNode p = parts.get(j);
                    String where = at + ".parts[" + j + "]";
                    if (p.has("functionResponse")) out.add(toolMessage(p.get("functionResponse"), where + ".functionResponse", toolImages));
                    else if (p.has("text") && !p.path("thought").asBoolean(false)) textPart(p.path("text").asText("")).ifPresent(rest::add);
                    else if (p.has("inlineData")) rest.add(inlineData(p.get("inlineData"), where + ".inlineData"));
                    else if (p.has("fileData")) rest.add(fileData(p.get("fileData"), where + ".fileData"));
                    else if (!p.has("thoughtSignature") && !p.has("text")) notes.add("dropped a " + kind(p) + " part from a user turn");
                }
                List<ObjectNode> all = new ArrayList<>(toolImages);
                all.addAll(rest);
                if (all.isEmpty()) return;
                ObjectNode m = out.addObject();
                m.put("role", "user");
                if (all.size() == 1 && all.get(0).path("type").asText().equals("text")) m.put("content", all.get(0).path("text").asText());
                else m.putArray("content").addAll(all);
            }

            /** The call answered: by its id, else the first unanswered call of that name in the model turn before. */
            private ObjectNode toolMessage(JsonNode fr, String at, List<ObjectNode> images) {
                if (!fr.isObject()) throw invalid(at, "must be a FunctionResponse object");
                String name = fr.path("name").asText("");
                String id = fr.path("id").asText("");
                Call call = unanswered.stream().filter(c -> !id.isEmpty() && c.id().equals(id)).findFirst()
                    .or(() -> unanswered.stream().filter(c -> c.name().equals(name)).findFirst())
                    .orElseThrow(() -> invalid(at, "answers no functionCall of the model turn before it (name '" + name + "'"
                        + (id.isEmpty() ? "" : ", id '" + id + "'") + ")"));
                unanswered.remove(call);
                String text = responseText(fr.path("response"));
                int before = images.size();
                JsonNode extra = fr.path("parts");
                for (int k = 0; k < extra.size(); k++) {
                    if (extra.get(k).has("inlineData")) images.add(inlineData(extra.get(k).get("inlineData"), at + ".parts[" + k + "].inlineData"));
                }
                if (text.isEmpty() && images.size() > before) text = AnthropicToChat.TOOL_IMAGE_POINTER;
                ObjectNode m = Json.object();
                m.put("role", "tool");
                m.put("tool_call_id", call.id());
                m.put("content", text);
                return m;
            }

            /** {"output": text} is the text; {"error": ...} is marked as an error; anything else is its JSON. */
            private static String responseText(JsonNode response) {
                if (response.isMissingNode() || response.isNull()) return "";
                if (response.isObject() && response.size() == 1 && response.path("output").isTextual()) return response.path("output").asText();
                if (response.isObject() && response.size() == 1 && response.has("error")) {
                    JsonNode e = response.get("error");
                    return "Error: " + (e.isTextual() ? e.asText() : Json.write(e));
                }
                return response.isTextual() ? response.asText() : Json.write(response);
            }

            private static Optional<ObjectNode> textPart(String text) {
                if (text.isBlank()) return Optional.empty();
                ObjectNode p = Json.object();
                p.put("type", "text");
                p.put("text", text);
                return Optional.of(p);
            }

            /** An image becomes an image_url part (Copilot's vision header follows); text is decoded; the rest is refused. */
            private static ObjectNode inlineData(JsonNode blob, String at) {
                String mime = blob.path("mimeType").asText("");
                String data = blob.path("data").asText("");
                if (mime.isBlank() || data.isBlank()) throw invalid(at, "needs mimeType and data");
                if (mime.startsWith("image/")) return imagePart("data:" + mime + ";base64," + data);
                if (mime.startsWith("text/") || mime.equals("application/json")) {
                    try {
                        return textPart(new String(Base64.getMimeDecoder().decode(data), UTF_8)).orElseGet(() -> Json.object().put("type", "text").put("text", ""));
                    } catch (IllegalArgumentException e) {
                        throw invalid(at + ".data", "is not base64");
                    }
                }
                throw invalid(at + ".mimeType", "Copilot's chat models read images and text, not " + mime);
            }

            private static ObjectNode fileData(JsonNode file, String at) {
                String mime = file.path("mimeType").asText("");
                String uri = file.path("fileUri").asText("");
                if (mime.startsWith("image/") && (uri.startsWith("https://") || uri.startsWith("http://"))) return imagePart(uri);
                throw invalid(at, "files stored with Google cannot be read through Copilot; send images or text inline (inlineData)");
            }

            private static ObjectNode imagePart(String url) {
                ObjectNode p = Json.object();
                p.put("type", "image_url");
                p.putObject("image_url").put("url", url);
                return p;
            }

            /** A string, or a Content whose text parts are joined by a blank line. */
            private static String systemText(JsonNode s) {
                if (s == null || s.isNull()) return "";
                if (s.isTextual()) return s.asText();
                if (!s.isObject() || !s.path("parts").isArray()) throw invalid("systemInstruction", "must be a Content object with parts");
                List<String> texts = new ArrayList<>();
                for (JsonNode p : s.get("parts")) if (!p.path("text").asText("").isBlank()) texts.add(p.path("text").asText());
                return String.join("\n\n", texts);
            }

            private static String kind(JsonNode part) {
                List<String> keys = new ArrayList<>();
                part.fieldNames().forEachRemaining(keys::add);
                keys.remove("thoughtSignature");
                return keys.isEmpty() ? "empty" : keys.get(0);
            }

            // ---- generation config ----

            /** Sampling, length, stops, candidates and structured output; the max output tokens sent, or null. */
            private Integer generation(JsonNode c, ObjectNode chat) {
                if (c.path("temperature").isNumber()) chat.set("temperature", c.get("temperature"));
                if (c.path("topP").isNumber()) chat.set("top_p", c.get("topP"));
                if (c.has("topK")) notes.add("dropped generationConfig.topK (chat completions have no top_k)");
                if (c.path("presencePenalty").isNumber()) chat.set("presence_penalty", c.get("presencePenalty"));
                if (c.path("frequencyPenalty").isNumber()) chat.set("frequency_penalty", c.get("frequencyPenalty"));
                if (c.path("seed").isIntegralNumber()) chat.set("seed", c.get("seed"));
                JsonNode stops = c.path("stopSequences");
                if (stops.isArray() && !stops.isEmpty()) chat.set("stop", stops.deepCopy());
                JsonNode n = c.path("candidateCount");
                if (!n.isMissingNode() && !n.isNull() && (!n.canConvertToInt() || !n.isIntegralNumber() || n.asInt() < 1)) {
                    throw invalid("generationConfig.candidateCount", "must be a positive integer");
                }
                if (n.asInt(1) > 1) chat.put("n", n.asInt());
                responseFormat(c, chat);
                return maxTokens(c.get("maxOutputTokens"), chat);
            }

            private Integer maxTokens(JsonNode n, ObjectNode chat) {
                if (n == null || n.isNull()) return null;
                if (!n.isIntegralNumber() || !n.canConvertToInt() || n.asInt() < 1) throw invalid("generationConfig.maxOutputTokens", "must be a positive integer");
                int value = n.asInt();
                ModelLimits limits = reasoning.limits();
                if (limits.knowsMaxOutput() && value > limits.maxOutputTokens()) {
                    notes.add("maxOutputTokens " + value + " lowered to " + limits.id() + "'s limit of " + limits.maxOutputTokens());
                    value = limits.maxOutputTokens();
                }
                chat.put(limits.wantsMaxCompletionTokens() ? "max_completion_tokens" : "max_tokens", value);
                return value;
            }

            /**
             * application/json with responseSchema or responseJsonSchema: a json_schema format; without: json_object. Both
             * schemas are normalised: Gemini CLI's router sends upper-case types even in responseJsonSchema.
             */
            private void responseFormat(JsonNode c, ObjectNode chat) {
                String mime = c.path("responseMimeType").asText("text/plain");
                JsonNode schema = c.has("responseJsonSchema") ? jsonSchema(c.get("responseJsonSchema"))
                    : c.has("responseSchema") ? jsonSchema(c.get("responseSchema")) : null;
                if (!mime.equals("application/json")) {
                    if (!mime.equals("text/plain")) notes.add("ignored responseMimeType " + mime);
                    return;
                }
                ObjectNode format = chat.putObject("response_format");
                if (schema == null || !schema.isObject()) {
                    format.put("type", "json_object");
                    return;
                }
                format.put("type", "json_schema");
                format.putObject("json_schema").put("name", "response").put("strict", false).set("schema", schema.deepCopy());
            }

            /**
             * thinkingBudget (0 off, -1 dynamic), thinkingLevel or includeThoughts alone: a thinking_budget within the
             * model's min/max where the catalog gives one, else a reasoning effort where the model reasons by effort.
             */
            private void thinking(JsonNode t, ObjectNode chat, Integer maxTokens) {
                if (!t.isObject()) return;
                includeThoughts = t.path("includeThoughts").asBoolean(false);
                String level = t.path("thinkingLevel").asText("").toUpperCase(Locale.ROOT);
                Integer budget;
                if (t.path("thinkingBudget").isIntegralNumber()) {
                    int b = t.get("thinkingBudget").asInt();
                    if (b == 0) return;
                    budget = b < 0 ? AnthropicToChat.MEDIUM_EFFORT_BUDGET : b;
                } else if (!level.isEmpty()) {
                    budget = switch (level) {
                        case "MINIMAL", "LOW" -> AnthropicToChat.LOW_EFFORT_BUDGET;
                        case "MEDIUM" -> AnthropicToChat.MEDIUM_EFFORT_BUDGET;
                        case "HIGH" -> Integer.MAX_VALUE;
                        default -> throw invalid("generationConfig.thinkingConfig.thinkingLevel", "must be MINIMAL, LOW, MEDIUM or HIGH, not " + level);
                    };
                } else if (includeThoughts) {
                    budget = AnthropicToChat.MEDIUM_EFFORT_BUDGET;
                } else {
                    return;
                }
                ModelLimits limits = reasoning.limits();
                if (limits.supportsThinking() && maxTokens == null && limits.knowsMaxOutput()) {
                    // a thinking budget must stay below max_tokens, which Gemini clients often leave out: the model's limit
                    maxTokens = limits.maxOutputTokens();
                    chat.put(limits.wantsMaxCompletionTokens() ? "max_completion_tokens" : "max_tokens", maxTokens);
                }
                if (limits.supportsThinking()) {
                    Integer b = limits.thinkingBudget(budget, maxTokens);
                    if (b != null) chat.put("thinking_budget", b);
                    else notes.add("thinking not forwarded: maxOutputTokens " + maxTokens + " leaves no room for the minimum budget");
                } else if (reasoning.byEffort()) {
                    chat.put("reasoning_effort", ChatToResponsesRequest.effortFor(budget));
                } else {
                    notes.add("thinking not forwarded: " + limits.id() + " has no thinking budget nor reasoning effort in the Copilot catalog");
                }
            }

            // ---- tools ----

            private void tools(JsonNode g, ObjectNode chat) {
                JsonNode list = g.path("tools");
                if (!list.isMissingNode() && !list.isNull() && !list.isArray()) throw invalid("tools", "must be an array of Tool objects");
                ArrayNode tools = Json.array();
                for (int i = 0; i < list.size(); i++) {
                    JsonNode t = list.get(i);
                    if (!t.isObject()) throw invalid("tools[" + i + "]", "must be a Tool object");
                    for (var field : t.properties()) {
                        if (!field.getKey().equals("functionDeclarations")) {
                            dropped.add("dropped the built-in tool " + field.getKey() + ": Copilot cannot run Google's tools");
                            continue;
                        }
                        JsonNode decls = field.getValue();
                        if (!decls.isArray()) throw invalid("tools[" + i + "].functionDeclarations", "must be an array of FunctionDeclaration objects");
                        for (int j = 0; j < decls.size(); j++) tools.add(function(decls.get(j), "tools[" + i + "].functionDeclarations[" + j + "]"));
                    }
                }
                toolChoice(g.path("toolConfig").path("functionCallingConfig"), tools, chat);
                if (!tools.isEmpty()) chat.set("tools", tools);
            }

            private static ObjectNode function(JsonNode d, String at) {
                String name = d.path("name").asText("");
                if (name.isBlank()) throw invalid(at + ".name", "is required");
                ObjectNode tool = Json.object().put("type", "function");
                ObjectNode fn = tool.putObject("function");
                fn.put("name", name);
                if (d.path("description").isTextual()) fn.put("description", d.path("description").asText());
                JsonNode schema = d.path("parametersJsonSchema").isObject() ? d.get("parametersJsonSchema").deepCopy()
                    : d.path("parameters").isObject() ? jsonSchema(d.get("parameters")) : null;
                if (schema == null) schema = Json.object().put("type", "object").set("properties", Json.object());
                fn.set("parameters", schema);
                return tool;
            }

            /** AUTO, ANY (limited to allowedFunctionNames: one name forces that function) or NONE. */
            private void toolChoice(JsonNode config, ArrayNode tools, ObjectNode chat) {
                String mode = config.path("mode").asText("AUTO").toUpperCase(Locale.ROOT);
                if (tools.isEmpty()) return;
                switch (mode) {
                    case "AUTO", "MODE_UNSPECIFIED" -> { }
                    case "NONE" -> chat.put("tool_choice", "none");
                    case "ANY", "VALIDATED" -> {
                        Set<String> allowed = new LinkedHashSet<>();
                        config.path("allowedFunctionNames").forEach(n -> allowed.add(n.asText()));
                        if (!allowed.isEmpty()) {
                            tools.removeIf(t -> !allowed.contains(t.path("function").path("name").asText()));
                            if (tools.isEmpty()) throw invalid("toolConfig.functionCallingConfig.allowedFunctionNames", "names no declared function");
                        }
                        if (mode.equals("VALIDATED")) return;
                        if (tools.size() == 1) {
                            chat.putObject("tool_choice").put("type", "function").putObject("function")
                                .put("name", tools.get(0).path("function").path("name").asText());
                        } else {
                            chat.put("tool_choice", "required");
                        }
                    }
                    default -> throw invalid("toolConfig.functionCallingConfig.mode", "must be AUTO, ANY, NONE or VALIDATED, not " + mode);
                }
            }

            /**
             * Google's OpenAPI subset to JSON Schema: upper-case types in lower case, nullable as a "null" type, at every
             * depth (properties, items, anyOf); Gemini-only keys (propertyOrdering, example) dropped.
             */
            static JsonNode jsonSchema(JsonNode s) {
                if (s.isArray()) {
                    ArrayNode out = Json.array();
                    for (JsonNode e : s) out.add(jsonSchema(e));
                    return out;
                }
                if (!s.isObject()) return s.deepCopy();
                ObjectNode out = Json.object();
                for (var f : s.properties()) {
                    String k = f.getKey();
                    JsonNode v = f.getValue();
                    if (SCHEMA_DROPPED.contains(k)) continue;
                    switch (k) {
                        case "type" -> {
                            String type = v.asText("").toLowerCase(Locale.ROOT);
                            if (!type.isEmpty() && !type.equals("type_unspecified")) out.put("type", type);
                        }
                        case "format" -> {
                            if (!v.asText("").equals("enum")) out.set(k, v.deepCopy());
                        }
                        case "properties", "$defs", "definitions" -> {
                            ObjectNode props = out.putObject(k);
                            for (var p : v.properties()) props.set(p.getKey(), jsonSchema(p.getValue()));
                        }
                        case "items", "anyOf", "oneOf", "allOf", "additionalProperties", "not" -> out.set(k, jsonSchema(v));
                        default -> out.set(k, v.deepCopy());
                    }
                }
                if (s.path("nullable").asBoolean(false)) {
                    if (out.path("type").isTextual()) out.set("type", Json.array().add(out.path("type").asText()).add("null"));
                    else if (out.path("anyOf").isArray()) ((ArrayNode) out.get("anyOf")).addObject().put("type", "null");
                }
                return out;
            }
        }

        /** The events of one answer as one GenerateContentResponse: how a whole answer is the stream machine's output folded. */
        static final class GeminiEvents {
            private GeminiEvents() {
            }

            /** The events of one answer as one response: each candidate's parts in order, neighbouring text of one kind joined. */
            static ObjectNode response(List<Frame> events) {
                Map<Integer, ObjectNode> candidates = new TreeMap<>();
                ObjectNode out = Json.object();
                for (Frame e : events) {
                    JsonNode data = e.json();
                    if (data == null) continue;
                    if (e.failure() != null) {
                        throw new ApiError(502, "api_error", data.path("error").path("message").asText("the answer failed"));
                    }
                    for (JsonNode c : data.path("candidates")) {
                        ObjectNode into = candidates.computeIfAbsent(c.path("index").asInt(0), i -> {
                            ObjectNode n = Json.object();
                            n.putObject("content").put("role", "model").putArray("parts");
                            return n;
                        });
                        for (JsonNode p : c.path("content").path("parts")) join((ArrayNode) into.get("content").get("parts"), (ObjectNode) p);
                        if (c.has("finishReason")) into.set("finishReason", c.get("finishReason"));
                        into.put("index", c.path("index").asInt(0));
                    }
                    for (String f : List.of("usageMetadata", "modelVersion", "responseId")) if (data.has(f)) out.set(f, data.get(f));
                }
                out.putArray("candidates").addAll(candidates.values());
                ObjectNode ordered = Json.object();
                ordered.set("candidates", out.remove("candidates"));
                ordered.setAll(out);
                return ordered;
            }

            private static void join(ArrayNode parts, ObjectNode p) {
                JsonNode last = parts.isEmpty() ? null : parts.get(parts.size() - 1);
                boolean text = p.has("text") && last != null && last.has("text") && !p.has("thoughtSignature")
                    && last.path("thought").asBoolean(false) == p.path("thought").asBoolean(false);
                if (text) ((ObjectNode) last).put("text", last.path("text").asText() + p.path("text").asText());
                else parts.add(p.deepCopy());
            }
        }

        /**
         * A chat stream to partial GenerateContentResponses (data-only events), one instance per request. Text and
         * thoughts (only when asked for) go out as they arrive; function calls are collected and sent whole at the end,
         * when their arguments are known to parse. The thought signature (reasoning_opaque) rides on the next text or
         * function-call part, or on an empty text part at the end. The last event carries finishReason and usageMetadata;
         * a broken upstream ends with Google's error object instead.
         */
        static final class ChatStreamToGemini implements TranslatedRelay.Translation {
            static final String CHUNK = "chunk";
            static final String ERROR = "error";

            private static final class ToolCall {
                String id = "";
                String name = "";
                final StringBuilder arguments = new StringBuilder();
            }

            private static final class Candidate {
                final Map<String, ToolCall> calls = new LinkedHashMap<>();
                final StringBuilder signature = new StringBuilder();
                final StringBuilder thinking = new StringBuilder();
                final Set<String> finishReasons = new LinkedHashSet<>();
            }

            private final String modelVersion;
            private final boolean includeThoughts;
            private final boolean merge;
            private final IdClock ids;
            private final String responseId;
            private final ChatChunks.ToolKeys toolKeys = new ChatChunks.ToolKeys();
            private final Map<Integer, Candidate> candidates = new TreeMap<>();
            private final List<String> notes = new ArrayList<>();
            private JsonNode usage;
            private boolean done;

            /** {@code merge}: every choice is candidate 0 (Copilot splits one answer into choices); false when n > 1 was asked. */
            ChatStreamToGemini(String modelVersion, boolean includeThoughts, boolean merge, IdClock ids) {
                this.modelVersion = modelVersion;
                this.includeThoughts = includeThoughts;
                this.merge = merge;
                this.ids = ids;
                this.responseId = ids.id("");
            }

            List<String> notes() {
                return List.copyOf(notes);
            }

            @Override
            public List<NamedEvent> start() {
                return List.of();
            }

            @Override
            public List<NamedEvent> onChunk(JsonNode chunk) {
                if (done) return List.of();
                if (chunk.path("usage").isObject()) usage = chunk.get("usage");
                Map<Integer, ArrayNode> parts = new TreeMap<>();
                for (JsonNode choice : chunk.path("choices")) {
                    int index = merge ? 0 : choice.path("index").asInt(0);
                    Candidate c = candidates.computeIfAbsent(index, i -> new Candidate());
                    ArrayNode out = parts.computeIfAbsent(index, i -> Json.array());
                    JsonNode delta = choice.path("delta");
                    String thought = delta.path("reasoning_text").asText("");
                    if (includeThoughts && !thought.isEmpty()) out.addObject().put("text", thought).put("thought", true);
                    c.thinking.append(thought);
                    c.signature.append(delta.path("reasoning_opaque").asText(""));
                    String text = delta.path("content").asText("");
                    if (!text.isEmpty()) signed(out.addObject().put("text", text), c);
                    for (JsonNode call : delta.path("tool_calls")) collect(choice.path("index").asInt(0), call, c);
                    if (choice.path("finish_reason").isTextual()) c.finishReasons.add(choice.path("finish_reason").asText());
                }
                parts.values().removeIf(ArrayNode::isEmpty);
                if (parts.isEmpty()) return List.of();
                ObjectNode event = envelope();
                ArrayNode list = event.putArray("candidates");
                parts.forEach((index, p) -> list.add(candidate(index, p)));
                return List.of(new NamedEvent(CHUNK, event));
            }

            /** The function calls, a signature no part carried yet, then finishReason on every candidate and the usage. */
            @Override
            public List<NamedEvent> finish() {
                if (done) return List.of();
                done = true;
                if (candidates.isEmpty()) candidates.put(0, new Candidate());
                ObjectNode event = Json.object();
                ArrayNode list = event.putArray("candidates");
                candidates.forEach((index, c) -> {
                    ArrayNode parts = Json.array();
                    for (ToolCall call : c.calls.values()) signed(functionCall(call), c, parts);
                    if (c.signature.length() > 0) signed(parts.addObject().put("text", ""), c);
                    ObjectNode candidate = candidate(index, parts);
                    candidate.put("finishReason", finishReason(c.finishReasons));
                    list.add(candidate);
                });
                event.set("usageMetadata", usageMetadata(usage == null ? Json.object() : usage));
                event.setAll(envelope());
                return List.of(new NamedEvent(CHUNK, event));
            }

            @Override
            public List<NamedEvent> fail(String message) {
                if (done) return List.of();
                done = true;
                return List.of(new NamedEvent(ERROR, GoogleErrors.body(503, message)));
            }

            @Override
            public boolean done() {
                return done;
            }

            /** A comment: Google's SDKs skip anything that is not a data line. */
            @Override
            public NamedEvent keepAlive() {
                return null;
            }

            /** Gemini's events are data lines only; an error object is the stream's failure. */
            @Override
            public Frame frame(NamedEvent e) {
                return Frame.data(e.data(), e.name().equals(ERROR) ? "upstream stream broke" : null);
            }

            private void collect(int choice, JsonNode fragment, Candidate c) {
                ToolCall call = c.calls.computeIfAbsent(toolKeys.key(choice, fragment), k -> new ToolCall());
                if (call.id.isEmpty()) call.id = fragment.path("id").asText("");
                JsonNode fn = fragment.path("function");
                if (call.name.isEmpty()) call.name = fn.path("name").asText("");
                call.arguments.append(fn.path("arguments").asText(""));
            }

            private ObjectNode functionCall(ToolCall call) {
                ObjectNode fc = Json.object();
                ObjectNode inner = fc.putObject("functionCall");
                inner.put("id", call.id.isEmpty() ? ids.id("call_") : call.id);
                inner.put("name", call.name);
                inner.set("args", ChatToAnthropic.toolInput(call.arguments.toString(), call.name, notes));
                return fc;
            }

            private static void signed(ObjectNode part, Candidate c, ArrayNode parts) {
                parts.add(part);
                signed(part, c);
            }

            private static void signed(ObjectNode part, Candidate c) {
                if (c.signature.length() == 0) return;
                part.put("thoughtSignature", ThoughtSignatures.pack(c.thinking.toString(), c.signature.toString()));
                c.signature.setLength(0);
                c.thinking.setLength(0);
            }

            private static ObjectNode candidate(int index, ArrayNode parts) {
                ObjectNode c = Json.object();
                if (!parts.isEmpty()) c.putObject("content").put("role", "model").set("parts", parts);
                c.put("index", index);
                return c;
            }

            private ObjectNode envelope() {
                ObjectNode e = Json.object();
                e.put("modelVersion", modelVersion);
                e.put("responseId", responseId);
                return e;
            }

            /** STOP for an ended answer and for function calls; MAX_TOKENS when cut by length; SAFETY by a content filter. */
            static String finishReason(Collection<String> reasons) {
                if (reasons.contains("length")) return "MAX_TOKENS";
                if (reasons.contains("content_filter")) return "SAFETY";
                for (String r : reasons) if (!Set.of("stop", "tool_calls", "function_call").contains(r)) return "OTHER";
                return "STOP";
            }

            /** Chat usage in Gemini's terms: thoughts counted apart from the candidates, the prompt including its cached part. */
            static ObjectNode usageMetadata(JsonNode u) {
                int prompt = u.path("prompt_tokens").asInt(0);
                int completion = u.path("completion_tokens").asInt(0);
                int thoughts = u.path("completion_tokens_details").path("reasoning_tokens").asInt(0);
                int cached = u.path("prompt_tokens_details").path("cached_tokens").asInt(0);
                ObjectNode m = Json.object();
                m.put("promptTokenCount", prompt);
                m.put("candidatesTokenCount", Math.max(0, completion - thoughts));
                if (thoughts > 0) m.put("thoughtsTokenCount", thoughts);
                if (cached > 0) m.put("cachedContentTokenCount", cached);
                m.put("totalTokenCount", u.path("total_tokens").asInt(prompt + completion));
                return m;
            }
        }

        /** The model list as Google's SDKs read it: names "models/{id}", token limits, the methods served. */
        static final class GeminiModels {
            static final List<String> METHODS = List.of("generateContent", "streamGenerateContent", "countTokens");
            static final List<String> TIERS = List.of("flash-lite", "flash", "pro");

            /**
             * A Gemini name the catalog lacks (Gemini CLI turns its aliases into ids such as gemini-3.1-pro-preview-customtools
             * or gemini-3.5-flash-lite that Copilot may not list): the catalog's newest Gemini of the same tier (pro, flash,
             * flash-lite), else its newest Gemini. Empty for other names and for a catalog without Gemini models.
             */
            static Optional<JsonNode> standIn(String name, List<JsonNode> catalog) {
                String lower = name.toLowerCase(Locale.ROOT);
                if (!lower.startsWith("gemini-")) return Optional.empty();
                String tier = TIERS.stream().filter(lower::contains).findFirst().orElse(null);
                if (tier == null) return Optional.empty();
                return newest(catalog, tier).or(() -> newest(catalog, null));
            }

            /** The newest gemini-* chat model of the tier (flash-lite, flash, pro; null: any). */
            static Optional<JsonNode> newest(List<JsonNode> catalog, String tier) {
                JsonNode best = null;
                for (JsonNode m : catalog) {
                    String id = m.path("id").asText().toLowerCase(Locale.ROOT);
                    if (!ModelResolver.isChat(m) || !id.startsWith("gemini-")) continue;
                    if (tier != null && !tier.equals(TIERS.stream().filter(id::contains).findFirst().orElse(""))) continue;
                    if (best == null || ModelResolver.compare(ModelResolver.version(id), ModelResolver.version(best.path("id").asText())) > 0) best = m;
                }
                return Optional.ofNullable(best);
            }

            static ObjectNode list(List<JsonNode> catalog) {
                ObjectNode o = Json.object();
                ArrayNode models = o.putArray("models");
                for (JsonNode m : catalog) if (ModelResolver.isChat(m)) models.add(entry(m));
                return o;
            }

            static ObjectNode entry(JsonNode m) {
                String id = m.path("id").asText();
                JsonNode limits = m.path("capabilities").path("limits");
                ObjectNode e = Json.object();
                e.put("name", "models/" + id);
                e.put("baseModelId", id);
                e.put("version", m.path("version").asText(id));
                e.put("displayName", m.path("name").asText(id));
                e.put("description", m.path("name").asText(id) + " (" + m.path("vendor").asText("GitHub Copilot") + ") through GitHub Copilot");
                e.put("inputTokenLimit", limits.path("max_prompt_tokens").asInt(limits.path("max_context_window_tokens").asInt(0)));
                e.put("outputTokenLimit", limits.path("max_output_tokens").asInt(0));
                METHODS.forEach(e.putArray("supportedGenerationMethods")::add);
                JsonNode supports = m.path("capabilities").path("supports");
                e.put("thinking", supports.has("max_thinking_budget") || supports.has("reasoning_effort") || supports.has("reasoning_efforts"));
                return e;
            }
        }

        /** Google's error object: {"error": {"code", "message", "status"}}, with RetryInfo when a retry delay is known. */
        static final class GoogleErrors {
            static ObjectNode body(int code, String message) {
                ObjectNode o = Json.object();
                ObjectNode err = o.putObject("error");
                err.put("code", code);
                err.put("message", message);
                err.put("status", status(code));
                return o;
            }

            /** retryAfterSeconds: the wait Copilot asked for, or null. */
            static ObjectNode body(int code, String message, String retryAfterSeconds) {
                ObjectNode o = body(code, message);
                if (retryAfterSeconds != null && retryAfterSeconds.matches("\\d+")) {
                    ObjectNode info = ((ObjectNode) o.get("error")).putArray("details").addObject();
                    info.put("@type", "type.googleapis.com/google.rpc.RetryInfo");
                    info.put("retryDelay", retryAfterSeconds + "s");
                }
                return o;
            }

            /** The google.rpc.Code name Google pairs with each HTTP status. */
            static String status(int code) {
                return switch (code) {
                    case 400, 413, 415, 422 -> "INVALID_ARGUMENT";
                    case 401 -> "UNAUTHENTICATED";
                    case 403 -> "PERMISSION_DENIED";
                    case 404 -> "NOT_FOUND";
                    case 409 -> "ABORTED";
                    case 402, 429 -> "RESOURCE_EXHAUSTED";
                    case 499 -> "CANCELLED";
                    case 501 -> "UNIMPLEMENTED";
                    case 502, 503 -> "UNAVAILABLE";
                    case 504 -> "DEADLINE_EXCEEDED";
                    default -> code >= 500 ? "INTERNAL" : "FAILED_PRECONDITION";
                };
            }
        }

        /** countTokens: an estimate with the model's tokenizer over every text, call, response and declaration of the request. */
        static final class GeminiTokens {
            static int count(JsonNode request, JsonNode model) {
                StringBuilder text = new StringBuilder();
                int fixed = 0;
                JsonNode system = request.path("systemInstruction");
                if (system.isTextual()) text.append(system.asText()).append('\n');
                for (JsonNode p : system.path("parts")) text.append(p.path("text").asText("")).append('\n');
                for (JsonNode c : request.path("contents")) {
                    fixed += TokenCounter.PER_MESSAGE;
                    for (JsonNode p : c.path("parts")) {
                        if (p.has("inlineData") || p.has("fileData")) fixed += TokenCounter.PER_IMAGE;
                        else if (p.has("text")) text.append(p.path("text").asText("")).append('\n');
                        else text.append(Json.write(p)).append('\n');
                    }
                }
                for (JsonNode t : request.path("tools")) {
                    for (JsonNode d : t.path("functionDeclarations")) {
                        fixed += TokenCounter.PER_TOOL;
                        text.append(Json.write(d)).append('\n');
                    }
                }
                return TokenCounter.count(text.toString(), fixed, model);
            }
        }
    }

    // ==== 6. Copilot client ====

    /**
     * Per-call facts: who initiated the turn and whether an image rides along (both change headers), and what
     * watches the client while Copilot has not answered.
     */
    record CallOptions(Initiator initiator, boolean vision, Map<String, String> headers, Watch watch) {
        static final CallOptions PLAIN = new CallOptions(Initiator.USER, false);

        CallOptions(Initiator initiator, boolean vision) {
            this(initiator, vision, Map.of());
        }

        CallOptions(Initiator initiator, boolean vision, Map<String, String> headers) {
            this(initiator, vision, headers, Watch.NONE);
        }

        CallOptions watched(Watch w) {
            return new CallOptions(initiator, vision, headers, w);
        }
    }

    /** What a request does while Copilot's headers have not arrived: notice a client that left, keep a stream alive. */
    interface Watch {
        Watch NONE = (waited, stream) -> true;

        /** Called about every {@link CopilotClient#POLL} of the wait; false when the client has gone (the call is then cancelled). */
        boolean waiting(Duration waited, boolean stream);
    }

    /**
     * How long Copilot may take. Streams: its headers within firstByte, then an event at least every streamIdle.
     * Other calls arrive whole, so they get the longer answer limit (the catalog GET gets firstByte). A stream
     * whose headers have not come within earlyCommit is answered 200 at once and kept alive with comments.
     */
    record Timeouts(Duration firstByte, Duration streamIdle, Duration answer, Duration earlyCommit, Duration keepAlive) {
        static final Timeouts DEFAULT = new Timeouts(Duration.ofSeconds(60), Duration.ofSeconds(120), Duration.ofMinutes(10),
            Duration.ofSeconds(3), Duration.ofSeconds(15));

        static Timeouts of(long firstByteSeconds, long streamIdleSeconds) {
            if (firstByteSeconds < 1) throw new UserFacingException("--first-byte-timeout must be at least 1 second");
            if (streamIdleSeconds < 1) throw new UserFacingException("--stream-idle-timeout must be at least 1 second");
            return new Timeouts(Duration.ofSeconds(firstByteSeconds), Duration.ofSeconds(streamIdleSeconds), DEFAULT.answer(),
                DEFAULT.earlyCommit(), DEFAULT.keepAlive());
        }
    }

    /** The client of a running stream went away: the stream is ended without a word, and its upstream cancelled. */
    static final class ClientDisconnected extends IOException {
        ClientDisconnected() {
            super("client disconnected");
        }
    }

    /** The proxy itself ended a stream (at shutdown): the message is the whole story for the client. */
    static final class EndedByProxy extends IOException {
        EndedByProxy(String message) {
            super(message);
        }
    }

    /** The client went away while Copilot had not answered; the upstream call was cancelled. */
    static final class ClientLeft extends RuntimeException {
        ClientLeft() {
            this("client disconnected; upstream request cancelled");
        }

        ClientLeft(String message) {
            super(message, null, false, false);
        }
    }

    /**
     * The streams relaying now, so that a shutdown can end each with its API's error event; once closing,
     * calls still waiting for Copilot's headers give up too.
     */
    static final class LiveStreams {
        static final String SHUTDOWN = "copilot-api is shutting down";

        /** How often the heartbeat looks at every running stream. */
        static final Duration TICK = Duration.ofMillis(500);

        private final Set<UpstreamEvents> running = java.util.concurrent.ConcurrentHashMap.newKeySet();
        private volatile boolean closing;
        private volatile ScheduledExecutorService heartbeat;

        /** Registers a stream; the one heartbeat thread for all of them starts with the first. */
        void add(UpstreamEvents s) {
            running.add(s);
            if (heartbeat == null) startHeartbeat();
        }

        private synchronized void startHeartbeat() {
            if (heartbeat != null) return;
            ScheduledExecutorService h = Threads.scheduler("stream-heartbeat");
            h.scheduleWithFixedDelay(() -> {
                long now = System.nanoTime();
                for (UpstreamEvents s : running) {
                    try {
                        s.beat(now);
                    } catch (RuntimeException e) {
                        Logs.log().warn("stream heartbeat: {}", describe(e));
                    }
                }
            }, TICK.toMillis(), TICK.toMillis(), TimeUnit.MILLISECONDS);
            heartbeat = h;
        }

        void remove(UpstreamEvents s) {
            running.remove(s);
        }

        boolean closing() {
            return closing;
        }

        /** Ends every running stream: each relay writes its API's error event and stops. Returns how many. */
        int endAll() {
            closing = true;
            int n = 0;
            for (UpstreamEvents s : List.copyOf(running)) {
                s.stop(new EndedByProxy(SHUTDOWN));
                n++;
            }
            return n;
        }

        int size() {
            return running.size();
        }
    }

    /**
     * The pivot: chat completions. Every chat-shaped call of every inbound API comes here, and only here is it
     * decided whether Copilot serves the model on /chat/completions or only on /responses; then the request and the
     * answer are translated, and the caller sees chat either way.
     */
    static final class ChatUpstream {
        enum Endpoint { CHAT, RESPONSES }

        private final CopilotClient copilot;
        private final ModelCatalog models;

        ChatUpstream(CopilotClient copilot, ModelCatalog models) {
            this.copilot = copilot;
            this.models = models;
        }

        /** The one routing decision: a model that lists neither endpoint is refused before anything is sent. */
        Endpoint endpoint(String model) {
            List<String> endpoints = models.endpointsOf(model);
            if (endpoints.isEmpty() || endpoints.contains(OpenAiRoutes.CHAT)) return Endpoint.CHAT;
            if (endpoints.contains(ResponsesRoutes.RESPONSES)) return Endpoint.RESPONSES;
            throw new ApiError(400, "invalid_request_error", "The model '" + model + "' is served by Copilot only on "
                + String.join(", ", endpoints), "model", "unsupported_api_for_model");
        }

        /** The Copilot path that serves the model: /chat/completions or /responses. */
        String path(String model) {
            return endpoint(model) == Endpoint.CHAT ? OpenAiRoutes.CHAT : ResponsesRoutes.RESPONSES;
        }

        /** A chat request made ready for the endpoint that serves its model; preparing checks it, so it comes before any charge. */
        sealed interface Prepared permits ForChat, ForResponses {}

        record ForChat(ObjectNode body) implements Prepared {}

        record ForResponses(String model, byte[] body) implements Prepared {}

        Prepared prepare(ObjectNode chat, boolean stream) {
            String model = chat.path("model").asText();
            if (endpoint(model) == Endpoint.CHAT) return new ForChat(forChat(chat, stream));
            return new ForResponses(model, ResponsesRoutes.capped(forResponses(chat)));
        }

        /** A whole answer, as the chat chunks it is equivalent to (a /responses answer through the same machine as its stream). */
        EventSource answer(Prepared prepared, CallOptions call) {
            if (prepared instanceof ForChat c) return EventSource.whole(ChatChunks.of(copilot.postJson(OpenAiRoutes.CHAT, c.body(), call)), false);
            ForResponses r = (ForResponses) prepared;
            JsonNode answer = ResponsesRoutes.answerRetryingCyberPolicy(() -> copilot.postJson(ResponsesRoutes.RESPONSES, r.body(), call));
            return new ResponsesAsChat(EventSource.whole(ResponseEvents.of(answer), true), new ResponsesStreamToChat(r.model(), true, IdClock.SYSTEM));
        }

        /** A stream of chat chunks. */
        EventSource stream(Prepared prepared, CallOptions call) {
            if (prepared instanceof ForChat c) return copilot.stream(OpenAiRoutes.CHAT, c.body(), call);
            ForResponses r = (ForResponses) prepared;
            return new ResponsesAsChat(ResponsesRoutes.streamRetryingCyberPolicy(() -> copilot.stream(ResponsesRoutes.RESPONSES, r.body(), call)),
                new ResponsesStreamToChat(r.model(), true, IdClock.SYSTEM));
        }

        /** The newer GPT models want max_completion_tokens; a stream always asks for its usage (the ledger needs it). */
        private static ObjectNode forChat(ObjectNode chat, boolean stream) {
            String model = chat.path("model").asText();
            boolean rename = ModelLimits.wantsMaxCompletionTokens(model) && chat.has("max_tokens") && !chat.has("max_completion_tokens");
            if (!rename && !stream) return chat;
            ObjectNode body = chat.deepCopy();
            if (rename) body.set("max_completion_tokens", body.remove("max_tokens"));
            if (stream) body.putObject("stream_options").put("include_usage", true);
            return body;
        }

        private static ObjectNode forResponses(ObjectNode chat) {
            Translated r = ChatToResponsesRequest.request(chat);
            r.body().put("model", chat.path("model").asText());
            if (chat.has(LongContext.FIELD)) r.body().set(LongContext.FIELD, chat.get(LongContext.FIELD));
            r.notes().forEach(n -> Logs.log().debug("{}: {}", ResponsesRoutes.RESPONSES, n));
            Requests.logBody("translated responses request", r.body());
            return r.body();
        }
    }

    /** Calls to the Copilot API with the editor headers, a fresh token, and one retry after a 401. */
    static final class CopilotClient {
        /** How often a call waiting for Copilot's headers looks at its client. */
        static final Duration POLL = Duration.ofMillis(200);
        static final int MAX_ERROR_BODY = 64 * 1024;

        private final Settings settings;
        private final Http http;
        private final CopilotTokens tokens;
        private final Timeouts timeouts;
        private final LiveStreams streams = new LiveStreams();
        private final UsageLimits limits;
        private final CatalogIdentity.Log catalogLog;
        /** Parsed upstream URIs by text: a handful of paths on one or two bases, so parsing once each is enough. */
        private final Map<String, URI> uris = new java.util.concurrent.ConcurrentHashMap<>();

        CopilotClient(Settings settings, Http http, CopilotTokens tokens, Timeouts timeouts) {
            this.settings = settings;
            this.http = http;
            this.tokens = tokens;
            this.timeouts = timeouts;
            this.limits = new UsageLimits(settings.dataDir().resolve(UsageLimits.FILE));
            this.catalogLog = new CatalogIdentity.Log(settings.dataDir().resolve(CatalogIdentity.Log.FILE));
        }

        /** The usage limits Copilot's answers reported (x-usage-ratelimit-*, x-quota-snapshot-*). */
        UsageLimits limits() {
            return limits;
        }

        /** How the catalog was last read, and what changed in it since the last start. */
        CatalogIdentity.Log catalogLog() {
            return catalogLog;
        }

        CopilotTokens tokens() {
            return tokens;
        }

        Timeouts timeouts() {
            return timeouts;
        }

        LiveStreams streams() {
            return streams;
        }

        /** COPILOT_API_COPILOT_URL, else the token's endpoints.api, else the account type's default. */
        String baseUrl() {
            return settings.copilotUrlOverride()
                .or(() -> tokens.currentIfAny().flatMap(CopilotToken::apiUrl))
                .orElse(settings.copilotBaseFallback());
        }

        JsonNode getJson(String path) {
            return readJson(send("GET", path, null, CallOptions.PLAIN, false));
        }

        /**
         * GET /models. Since mid-2026 an account under usage-based billing answers a conversation identity with a JSON
         * string (a notice to update the client), so the catalog is asked with the model-access identity, and after a
         * notice once more with the GitHub token and the Copilot CLI's integration id. Neither giving a catalog is an
         * error that names what was tried; a 466 says which versions to change.
         */
        JsonNode catalog() {
            List<String> tried = new ArrayList<>();
            for (CatalogIdentity identity : CatalogIdentity.values()) {
                Http.Reply reply = catalogReply(identity);
                limits.seen(reply);
                String body = Http.readLimited(reply, 32 * 1024 * 1024);
                int status = reply.statusCode();
                if (status == 466) {
                    throw new VersionsRefused("Copilot refused the editor versions copilot-api sends (466 on GET /models with "
                        + settings.editor().headers().get("editor-version") + ", " + settings.editor().headers().get("editor-plugin-version")
                        + "): " + CopilotHints.hint(466, null, null).orElse(""));
                }
                if (status >= 400) {
                    if (identity == CatalogIdentity.MODEL_ACCESS) throw new UpstreamException(status, body, reply);
                    tried.add(identity.label + ": HTTP " + status + " " + Redact.shorten(body));
                    break;
                }
                Optional<JsonNode> answer = Json.tryParse(body);
                if (answer.isPresent() && answer.get().path("data").isArray()) {
                    catalogLog.read(identity, tried, answer.get());
                    return answer.get();
                }
                tried.add(identity.label + ": " + (answer.isPresent() && answer.get().isTextual()
                    ? "the notice \"" + Redact.shorten(answer.get().asText()) + "\"" : "no catalog (" + Redact.shorten(body) + ")"));
                Logs.log().debug("GET /models with the {}: no catalog; {}", identity.label, tried.get(tried.size() - 1));
            }
            throw new UserFacingException("Copilot gave no model catalog; tried " + String.join("; then ", tried));
        }

        private Http.Reply catalogReply(CatalogIdentity identity) {
            if (identity == CatalogIdentity.GITHUB_CLI) {
                return await(catalogRequest(identity, tokens.githubToken().value()), Watch.NONE, false);
            }
            CopilotToken token = tokens.current();
            Http.Reply reply = await(catalogRequest(identity, token.token()), Watch.NONE, false);
            if (reply.statusCode() != 401) return reply;
            Http.readLimited(reply, MAX_ERROR_BODY);
            Optional<CopilotToken> fresh = tokens.refreshAfterUnauthorized(token);
            if (fresh.isEmpty()) throw new UpstreamException(401, "Copilot refused the Copilot token on GET /models", reply);
            return await(catalogRequest(identity, fresh.get().token()), Watch.NONE, false);
        }

        /** Copilot answered 466: the editor versions copilot-api sends are refused. */
        static final class VersionsRefused extends UserFacingException {
            VersionsRefused(String message) {
                super(message);
            }
        }

        /** GET /models as the model-access identity: no content type, openai-intent and x-interaction-type model-access. */
        private Http.Call catalogRequest(CatalogIdentity identity, String bearer) {
            Http.Call b = new Http.Call("GET", uri("/models"))
                .timeout(timeouts.firstByte())
                .idle(timeouts.answer().plusMinutes(1))
                .header("authorization", "Bearer " + bearer)
                .header("copilot-integration-id", identity.integrationId)
                .header("openai-intent", "model-access")
                .header("x-interaction-type", "model-access")
                .header("x-request-id", Ids.uuid())
                .header("accept", "application/json");
            settings.editor().applyTo(b);
            return b;
        }

        JsonNode postJson(String path, JsonNode body, CallOptions options) {
            return postJson(path, Json.bytes(body), options);
        }

        /** A body already in bytes (spliced from the client's own, where little changed). */
        JsonNode postJson(String path, byte[] body, CallOptions options) {
            return readJson(send("POST", path, body, options, false));
        }

        UpstreamEvents stream(String path, JsonNode body, CallOptions options) {
            return stream(path, Json.bytes(body), options);
        }

        UpstreamEvents stream(String path, byte[] body, CallOptions options) {
            return new UpstreamEvents(send("POST", path, body, options, true).body(), timeouts.streamIdle(), timeouts.keepAlive(), streams);
        }

        /** Sends once; on 401 refreshes the token and sends once more. Errors become UpstreamException. */
        Http.Reply send(String method, String path, byte[] body, CallOptions options, boolean stream) {
            CopilotToken token = tokens.current();
            Http.Reply response = await(request(method, path, body, options, stream, token), options.watch(), stream);
            if (response.statusCode() == 401) {
                String detail = Http.readLimited(response, MAX_ERROR_BODY);
                Optional<CopilotToken> fresh = tokens.refreshAfterUnauthorized(token);
                if (fresh.isEmpty()) throw new UpstreamException(401, detail, response);
                Logs.log().info("Copilot answered 401 ({}); retrying once with a refreshed Copilot token", Redact.shorten(detail));
                response = await(request(method, path, body, options, stream, fresh.get()), options.watch(), stream);
            }
            if (response.statusCode() < 400) tokens.accepted();
            limits.seen(response);
            if (response.statusCode() >= 400) {
                String detail = Http.readLimited(response, MAX_ERROR_BODY);
                throw new UpstreamException(response.statusCode(), detail, response);
            }
            return response;
        }

        /**
         * Waits for Copilot's headers while the watch looks at the client: a client that left, or a shutdown,
         * aborts the call (which closes the upstream connection). The call's timeout bounds the wait.
         */
        private Http.Reply await(Http.Call call, Watch watch, boolean stream) {
            Http.InFlight pending = http.begin(call);
            long start = System.nanoTime();
            try {
                while (true) {
                    try {
                        return pending.reply.get(POLL.toMillis(), TimeUnit.MILLISECONDS);
                    } catch (java.util.concurrent.TimeoutException e) {
                        if (streams.closing()) throw new ApiError(503, "api_error", LiveStreams.SHUTDOWN);
                        if (!watch.waiting(Duration.ofNanos(System.nanoTime() - start), stream)) throw new ClientLeft();
                    }
                }
            } catch (ExecutionException e) {
                throw Http.failure(call.uri, e.getCause());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                pending.abort(e);
                throw new UpstreamUnreachable("Interrupted while calling " + Http.origin(call.uri), e);
            } catch (RuntimeException e) {
                pending.abort(e);
                throw e;
            }
        }

        private Http.Call request(String method, String path, byte[] body, CallOptions options, boolean stream, CopilotToken token) {
            URI uri = uri(path);
            Duration limit = stream || method.equals("GET") ? timeouts.firstByte() : timeouts.answer();
            Http.Call b = (body == null ? new Http.Call(method, uri) : Http.Call.post(uri, "application/json", body))
                .timeout(limit)
                .streaming(stream)
                .idle((stream ? timeouts.streamIdle() : timeouts.answer()).plusMinutes(1))
                .header("authorization", "Bearer " + token.token())
                .header("copilot-integration-id", EditorHeaders.INTEGRATION_ID)
                .header("openai-intent", settings.editor().intent())
                .header("x-request-id", Ids.uuid())
                .header("x-initiator", options.initiator().wire())
                .header("accept", stream ? "text/event-stream" : "application/json");
            settings.editor().applyTo(b);
            if (options.vision()) b.header("copilot-vision-request", "true");
            options.headers().forEach(b::header);
            return b;
        }

        private URI uri(String path) {
            String text = baseUrl() + path;
            if (uris.size() > 64) uris.clear();
            return uris.computeIfAbsent(text, URI::create);
        }

        private static JsonNode readJson(Http.Reply response) {
            try (InputStream in = response.body()) {
                return JSON.readTree(in);
            } catch (IOException e) {
                throw new UpstreamUnreachable("Copilot's answer could not be read: " + Http.brief(e), e);
            }
        }
    }

    /** A Copilot token as the exchange returns it. */
    record CopilotToken(String token, long expiresAt, long refreshIn, Optional<String> apiUrl) {
        static CopilotToken from(JsonNode j) {
            String token = j.path("token").asText("");
            if (token.isEmpty()) throw new UserFacingException("GitHub's Copilot token answer has no token");
            long expiresAt = j.path("expires_at").asLong(Instant.now().getEpochSecond() + 1500);
            long refreshIn = j.path("refresh_in").asLong(Math.max(60, expiresAt - Instant.now().getEpochSecond() - 300));
            Optional<String> api = Optional.of(j.path("endpoints").path("api").asText("")).filter(s -> !s.isBlank())
                .map(Settings::trimSlash);
            return new CopilotToken(token, expiresAt, refreshIn, api);
        }

        /** When to refresh: about a minute before refresh_in, never sooner than one second. */
        Duration refreshDelay() {
            long seconds = refreshIn > 120 ? refreshIn - 60 : Math.max(1, refreshIn / 2);
            return Duration.ofSeconds(seconds);
        }

        boolean expiresWithin(Duration d) {
            return Instant.now().plus(d).getEpochSecond() >= expiresAt;
        }

        @Override
        public String toString() {
            return "CopilotToken[expiresAt=" + expiresAt + ", refreshIn=" + refreshIn + ", api=" + apiUrl.orElse("-") + "]";
        }
    }

    /**
     * Keeps a valid Copilot token for as long as the server runs: exchanged at start, refreshed ahead of
     * refresh_in, retried with backoff when a refresh fails (the old token stays in use), and refreshed at
     * once when Copilot answers 401. No failure holds a request up for longer than {@link Pacing#serveWithin}, and
     * exchanges wait on a lock that does not pin a virtual thread (a hung exchange must not freeze other handlers).
     */
    static final class CopilotTokens implements AutoCloseable {
        /**
         * How failures are paced. serveWithin bounds what a request can be held to by an earlier failure: the back-off
         * after failed exchanges (firstBackoff, doubling) and the quiet time after a refresh that a 401 forced (while
         * Copilot refuses, one exchange per serveWithin) never exceed it, so service resumes at most serveWithin after
         * GitHub and Copilot do; only a retry-after GitHub sent with a rate limit (429) is waited out beyond it, up to
         * maxBackoff. The scheduled refresh in the background backs off further, up to maxBackoff.
         */
        record Pacing(Duration serveWithin, Duration firstBackoff, Duration maxBackoff) {
            static final Pacing DEFAULT = new Pacing(Duration.ofSeconds(10), Duration.ofSeconds(1), Duration.ofMinutes(5));

            /** The wait after the n-th failure in a row: firstBackoff, doubled each time, never above limit. */
            Duration backoff(int failures, Duration limit) {
                long ms = firstBackoff.toMillis() << Math.min(Math.max(failures, 1) - 1, 20);
                return Duration.ofMillis(Math.min(limit.toMillis(), ms));
            }
        }

        private final Settings settings;
        private final Http http;
        private final GitHubToken githubToken;
        private final ScheduledExecutorService scheduler = Threads.scheduler("copilot-token-refresh");
        /** One exchange at a time; requests that need a new token wait here, at most serveWithin. */
        private final java.util.concurrent.locks.ReentrantLock exchanging = new java.util.concurrent.locks.ReentrantLock();
        private final java.util.concurrent.atomic.AtomicReference<java.util.concurrent.ScheduledFuture<?>> next =
            new java.util.concurrent.atomic.AtomicReference<>();
        private volatile Pacing pacing = Pacing.DEFAULT;
        private volatile CopilotToken current;
        /** Failed exchanges in a row, the last of them, and when a request may exchange again (guarded by exchanging). */
        private volatile int failures;
        private RuntimeException lastFailure;
        private Instant retryExchangeAt = Instant.EPOCH;
        /** Until then a 401 is reported without a new exchange: one was made after a 401 less than serveWithin ago. */
        private volatile Instant unauthorizedQuietUntil = Instant.EPOCH;

        CopilotTokens(Settings settings, Http http, String githubToken) {
            this(settings, http, new GitHubToken(githubToken, "--github-token"));
        }

        CopilotTokens(Settings settings, Http http, GitHubToken githubToken) {
            this.settings = settings;
            this.http = http;
            this.githubToken = githubToken;
        }

        /** The GitHub token behind the Copilot tokens (the catalog's fallback identity needs it; never logged). */
        GitHubToken githubToken() {
            return githubToken;
        }

        /** The exchange itself: GET {github_api}/copilot_internal/v2/token. */
        CopilotToken exchange() {
            return exchange(GitHubAuth.apiGet(settings, "/copilot_internal/v2/token", githubToken.value()));
        }

        /** An exchange a request waits for: GitHub's answer must come within serveWithin. */
        private CopilotToken exchangeForRequest() {
            Duration limit = pacing.serveWithin();
            try {
                return exchange(GitHubAuth.apiGet(settings, "/copilot_internal/v2/token", githubToken.value()).timeout(limit));
            } catch (UpstreamTimeout e) {
                throw new UpstreamTimeout("GitHub did not answer the Copilot token exchange within " + Math.max(1, limit.toSeconds())
                    + "s (" + e.getMessage() + ")", e);
            }
        }

        private CopilotToken exchange(Http.Call request) {
            URI uri = request.uri;
            Http.Reply response = http.send(request);
            String body = Http.readLimited(response, 1024 * 1024);
            int status = response.statusCode();
            String who = githubToken.describe();
            if (status == 401) throw new UserFacingException("GitHub rejected " + who + " (401 at " + uri
                + "): it is invalid, expired or revoked; " + githubToken.fix());
            if (status == 403) throw new UserFacingException("the GitHub account of " + who + " has no Copilot access (403 at " + uri + "): "
                + said(body, status) + (githubToken.origin() == GitHubToken.Origin.STORED ? "" : "; if that is not your Copilot account, " + githubToken.fix()));
            if (status == 404) throw new UserFacingException(who + " cannot be exchanged for a Copilot token (404 at "
                + uri + "): it is a personal access token or another app's token, not a Copilot login (ghu_...); " + githubToken.fix());
            if (status == 429) throw new TokenExchangeLimited("GitHub rate-limited the Copilot token exchange (429 at " + uri + "): "
                + said(body, status), response.header("retry-after").flatMap(TokenExchangeLimited::wait).orElse(null));
            // GitHub failing (5xx, ...) is not Copilot answering the request: a 502 that says which call failed
            if (status >= 400) throw new UserFacingException("GitHub's Copilot token exchange answered " + status + " at " + uri + ": " + said(body, status));
            CopilotToken token = CopilotToken.from(Json.tryParse(body).orElseThrow(() ->
                new UserFacingException("GitHub's Copilot token answer is not JSON: " + Redact.shorten(body))));
            if (settings.showToken()) System.out.println("Copilot token: " + token.token());
            return token;
        }

        /** What GitHub's error answer says: its message, or the body shortened. */
        private static String said(String body, int status) {
            return Json.tryParse(body).map(j -> Errors.upstreamMessage(j, status)).orElse(Redact.shorten(body));
        }

        /** Exchanges now (failing loudly) and schedules the refreshes. */
        void start() {
            current = exchange();
            Logs.log().info("Copilot token ready (expires in {}s, refresh in {}s)",
                current.expiresAt() - Instant.now().getEpochSecond(), current.refreshIn());
            schedule(current.refreshDelay());
        }

        Optional<CopilotToken> currentIfAny() {
            return Optional.ofNullable(current);
        }

        /** Shorter waits for tests; the real values are {@link Pacing#DEFAULT}. */
        void pace(Pacing p) {
            pacing = p;
        }

        /** The token to use now; refreshed on the spot if it has expired (a laptop that slept, a failed refresh). */
        CopilotToken current() {
            CopilotToken t = current;
            if (t == null) throw new UserFacingException("no Copilot token yet");
            if (t.expiresWithin(Duration.ofSeconds(10))) {
                exclusively(() -> {
                    if (current == t) refreshNow(this::exchangeForRequest);
                    return current;
                });
            }
            return current;
        }

        /**
         * After a 401: the token to retry with, refreshed unless another request already did. While Copilot keeps
         * refusing, at most one exchange per serveWithin: a 401 within that time is reported as it is (every request
         * still tries the current token first, so a Copilot that takes it again is used at once).
         */
        Optional<CopilotToken> refreshAfterUnauthorized(CopilotToken stale) {
            return exclusively(() -> {
                if (current != stale) return Optional.of(current);
                Instant now = Instant.now();
                if (now.isBefore(unauthorizedQuietUntil)) return Optional.empty();
                refreshNow(this::exchangeForRequest);
                unauthorizedQuietUntil = now.plus(pacing.serveWithin());
                return Optional.of(current);
            });
        }

        /** Copilot took the token: a later 401 is news again. */
        void accepted() {
            if (unauthorizedQuietUntil.isAfter(Instant.EPOCH)) unauthorizedQuietUntil = Instant.EPOCH;
        }

        /**
         * Runs the task holding the exchange lock, waiting for it at most serveWithin: an exchange in flight may take
         * up to its own timeout, and a request behind it fails with a clear message rather than waiting as long.
         */
        private <T> T exclusively(Supplier<T> task) {
            Duration limit = pacing.serveWithin();
            try {
                if (!exchanging.tryLock(limit.toMillis(), TimeUnit.MILLISECONDS)) {
                    throw new UserFacingException("the Copilot token is being refreshed and GitHub has not answered within "
                        + Math.max(1, limit.toSeconds()) + "s; try again shortly");
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new UserFacingException("interrupted while waiting for the Copilot token to be refreshed", e);
            }
            try {
                return task.get();
            } finally {
                exchanging.unlock();
            }
        }

        /**
         * Exchanges now, unless the last exchange failed and its back-off has not passed (then that failure again).
         * The back-off a request can meet is capped at serveWithin, except that GitHub's own retry-after on a rate limit
         * is waited out (up to maxBackoff): asking sooner would only be refused again. Called holding the exchange lock.
         */
        private void refreshNow(Supplier<CopilotToken> exchange) {
            Instant now = Instant.now();
            if (lastFailure != null && now.isBefore(retryExchangeAt)) {
                long left = Math.max(1, Duration.between(now, retryExchangeAt).plusMillis(999).toSeconds());
                String message = "the Copilot token could not be refreshed (" + describe(lastFailure) + "); next try in " + left + "s";
                if (lastFailure instanceof TokenExchangeLimited limited) {
                    throw new TokenExchangeLimited(message, limited.retryAfter().isPresent() ? Duration.ofSeconds(left) : null);
                }
                throw new UserFacingException(message);
            }
            try {
                current = exchange.get();
            } catch (RuntimeException e) {
                failures++;
                lastFailure = e;
                Duration backoff = pacing.backoff(failures, pacing.serveWithin());
                if (e instanceof TokenExchangeLimited limited && limited.retryAfter().isPresent()) {
                    Duration asked = limited.retryAfter().get();
                    backoff = asked.compareTo(pacing.maxBackoff()) > 0 ? pacing.maxBackoff() : asked.compareTo(backoff) > 0 ? asked : backoff;
                }
                retryExchangeAt = Instant.now().plus(backoff);
                throw e;
            }
            failures = 0;
            lastFailure = null;
            Logs.log().info("Copilot token refreshed (refresh in {}s)", current.refreshIn());
            schedule(current.refreshDelay());
        }

        /** In the background nobody waits, so a failing refresh backs off further than a request's cap, up to maxBackoff. */
        private void scheduledRefresh() {
            try {
                exclusively(() -> {
                    refreshNow(this::exchange);
                    return current;
                });
            } catch (RuntimeException e) {
                Duration wait = pacing.backoff(failures, pacing.maxBackoff());
                Duration limited = Duration.between(Instant.now(), retryExchangeAt);
                if (limited.compareTo(wait) > 0) wait = limited;
                Logs.log().warn("Copilot token refresh failed ({}); keeping the current token, retrying in {}s",
                    describe(e), Math.max(1, wait.toSeconds()));
                schedule(wait);
            }
        }

        private void schedule(Duration delay) {
            if (scheduler.isShutdown()) return;
            java.util.concurrent.ScheduledFuture<?> before = next.getAndSet(
                scheduler.schedule(this::scheduledRefresh, delay.toMillis(), TimeUnit.MILLISECONDS));
            if (before != null) before.cancel(false);
        }

        @Override
        public void close() {
            scheduler.shutdownNow();
        }
    }

    /** Copilot's model catalog, cached and refreshed now and then. */
    static final class ModelCatalog {
        static final Duration TTL = Duration.ofMinutes(10);

        private final CopilotClient copilot;
        /** The fetch in flight, if any: every request that needs the catalog meanwhile shares its result or its failure. */
        private final java.util.concurrent.atomic.AtomicReference<java.util.concurrent.CompletableFuture<Fetched>> fetching =
            new java.util.concurrent.atomic.AtomicReference<>();
        private volatile Fetched models;
        private volatile Instant fetchedAt = Instant.EPOCH;

        /**
         * The catalog as fetched, and its models by id (the first of an id, as a scan finds it): every model request
         * looks a model up several times (resolve, endpoint, charge, cost), so by id rather than by a walk of the list.
         */
        private record Fetched(List<JsonNode> list, Map<String, JsonNode> byId) {
            static Fetched of(List<JsonNode> list) {
                Map<String, JsonNode> byId = new HashMap<>();
                for (JsonNode m : list) byId.putIfAbsent(m.path("id").asText(), m);
                return new Fetched(list, Map.copyOf(byId));
            }
        }

        ModelCatalog(CopilotClient copilot) {
            this.copilot = copilot;
        }

        /** Fetches at start; a failure is logged, and the next request tries again. */
        void refreshQuietly() {
            try {
                List<JsonNode> list = list();
                Logs.log().info("{} models available: {}", list.size(), String.join(", ", ids()));
            } catch (RuntimeException e) {
                Logs.log().warn("{} (the next request that needs it tries again)", describe(e));
            }
        }

        private Fetched fetch() {
            JsonNode answer = copilot.catalog();
            List<JsonNode> list = new ArrayList<>();
            answer.path("data").forEach(list::add);
            return Fetched.of(List.copyOf(list));
        }

        private boolean stale() {
            return models == null || fetchedAt.plus(TTL).isBefore(Instant.now());
        }

        /**
         * The catalog; one fetch in flight at a time. Requests that find it missing wait for that fetch and share its
         * result or its failure (a hung fetch fails them all at its one timeout, and the next request fetches anew);
         * requests that find it expired while another refreshes are served the cached list.
         */
        List<JsonNode> list() {
            return current().list();
        }

        private Fetched current() {
            Fetched cached = models;
            if (!stale()) return cached;
            java.util.concurrent.CompletableFuture<Fetched> mine = new java.util.concurrent.CompletableFuture<>();
            java.util.concurrent.CompletableFuture<Fetched> running = fetching.compareAndExchange(null, mine);
            if (running != null) return cached != null ? cached : shared(running);
            try {
                if (stale()) {
                    Fetched fresh = fetch();
                    fetchedAt = Instant.now();
                    models = fresh;
                }
                fetching.set(null);
                mine.complete(models);
                return models;
            } catch (RuntimeException e) {
                CatalogUnavailable failure = new CatalogUnavailable(e);
                fetching.set(null);
                mine.completeExceptionally(failure);
                if (cached == null) throw failure;
                Logs.log().warn("could not refresh the Copilot model list, serving the cached one: {}", describe(e));
                return cached;
            }
        }

        /** The result of another request's fetch, or its failure as it was thrown there. */
        private static Fetched shared(java.util.concurrent.CompletableFuture<Fetched> running) {
            try {
                return running.join();
            } catch (java.util.concurrent.CompletionException e) {
                if (e.getCause() instanceof RuntimeException r) throw r;
                throw e;
            }
        }

        List<String> ids() {
            List<String> ids = new ArrayList<>();
            for (JsonNode m : list()) ids.add(m.path("id").asText());
            return ids;
        }

        /** A model of the catalog as last read, never fetching: for settling a request's cost after its answer. */
        Optional<JsonNode> known(String id) {
            Fetched cached = models;
            return cached == null ? Optional.empty() : Optional.ofNullable(cached.byId().get(id));
        }

        Optional<JsonNode> find(String id) {
            return Optional.ofNullable(current().byId().get(id));
        }

        /**
         * The endpoints a model lists in the catalog; empty for a model that lists none or an unknown model (Copilot then
         * answers for itself). A catalog that cannot be read fails the request (CatalogUnavailable).
         */
        List<String> endpointsOf(String id) {
            return find(id).map(ModelResolver::endpoints).orElse(List.of());
        }
    }

    /** Who asks Copilot for the catalog: the model-access identity first, then the GitHub token as the Copilot CLI. */
    enum CatalogIdentity {
        MODEL_ACCESS("model-access identity", EditorHeaders.INTEGRATION_ID),
        GITHUB_CLI("GitHub token as " + CatalogIdentity.CLI_INTEGRATION_ID, CatalogIdentity.CLI_INTEGRATION_ID);

        static final String CLI_INTEGRATION_ID = "copilot-developer-cli";

        final String label;
        final String integrationId;

        CatalogIdentity(String label, String integrationId) {
            this.label = label;
            this.integrationId = integrationId;
        }

        /**
         * Early warning: which identity read the catalog, and which models appeared or went away since the last start
         * (their ids kept one a line in the data directory). Logged once per run, at the first read.
         */
        static final class Log {
            static final String FILE = "models-seen.txt";

            record Change(boolean first, List<String> added, List<String> removed) {}

            private final Path file;
            private final java.util.concurrent.atomic.AtomicBoolean noted = new java.util.concurrent.atomic.AtomicBoolean();
            private volatile boolean keep = true;
            private volatile CatalogIdentity identity;
            private volatile List<String> tried = List.of();
            private volatile Change change;

            Log(Path file) {
                this.file = file;
            }

            /** Compares with the list kept, without replacing it (for `debug --probe`). */
            Log observeOnly() {
                keep = false;
                return this;
            }

            Optional<CatalogIdentity> identity() {
                return Optional.ofNullable(identity);
            }

            /** What answered no catalog before the identity that did. */
            List<String> tried() {
                return tried;
            }

            Optional<Change> change() {
                return Optional.ofNullable(change);
            }

            void read(CatalogIdentity used, List<String> before, JsonNode catalog) {
                identity = used;
                tried = List.copyOf(before);
                if (!noted.compareAndSet(false, true)) return;
                List<String> ids = new ArrayList<>();
                catalog.path("data").forEach(m -> ids.add(m.path("id").asText()));
                change = compare(ids);
                Logs.log().info("model catalog read with the {}{}; the editor versions were accepted", used.label,
                    before.isEmpty() ? "" : " (before it: " + String.join("; ", before) + ")");
                if (!change.first() && !change.added().isEmpty()) Logs.log().warn("models new since the last start: {}", String.join(", ", change.added()));
                if (!change.first() && !change.removed().isEmpty()) Logs.log().warn("models gone since the last start: {}", String.join(", ", change.removed()));
            }

            private Change compare(List<String> ids) {
                List<String> previous = null;
                try {
                    if (Files.isRegularFile(file)) previous = Files.readAllLines(file, UTF_8).stream().filter(l -> !l.isBlank()).toList();
                    if (keep) {
                        Files.createDirectories(file.getParent());
                        Files.writeString(file, String.join("\n", ids) + "\n", UTF_8);
                    }
                } catch (IOException e) {
                    Logs.log().warn("could not keep the model list in {}: {}", file, describe(e));
                }
                if (previous == null) return new Change(true, List.of(), List.of());
                Set<String> before = new LinkedHashSet<>(previous);
                Set<String> now = new LinkedHashSet<>(ids);
                return new Change(false, ids.stream().filter(id -> !before.contains(id)).toList(),
                    previous.stream().filter(id -> !now.contains(id)).toList());
            }
        }
    }

    /**
     * The usage limits Copilot reports on its answers since mid-2026: x-usage-ratelimit-session / -weekly and
     * x-quota-snapshot-BUCKET, each "ent=..&ov=..&ovPerm=..&rem=PERCENT&rst=ISO&totRem=.." (ent=-1: unlimited). The
     * latest of each is kept (in memory and in the data directory, for `check-usage`), shown by /usage and the
     * dashboard, and a window reaching 80% and 95% used is logged once each.
     */
    static final class UsageLimits {
        static final String FILE = "usage-limits.json";
        static final String RATE_LIMIT = "x-usage-ratelimit-";
        static final String QUOTA = "x-quota-snapshot-";
        static final int[] WARN_AT = {95, 80};

        private final Path file;
        private final Map<String, ObjectNode> rateLimits = new java.util.concurrent.ConcurrentSkipListMap<>();
        private final Map<String, ObjectNode> quotas = new java.util.concurrent.ConcurrentSkipListMap<>();
        private final Map<String, Integer> warned = new java.util.concurrent.ConcurrentHashMap<>();
        private volatile Instant seenAt;

        UsageLimits(Path file) {
            this.file = file;
        }

        /** Reads the limit headers of one answer (any status). */
        void seen(Http.Reply reply) {
            boolean changed = false;
            for (org.eclipse.jetty.http.HttpField f : reply.headers()) {
                // every answer passes here: its other headers are passed over without a lower-cased copy of each name
                String raw = f.getName();
                Map<String, ObjectNode> into = startsWith(raw, RATE_LIMIT) ? rateLimits : startsWith(raw, QUOTA) ? quotas : null;
                if (into == null) continue;
                String window = raw.toLowerCase(Locale.ROOT).substring(into == rateLimits ? RATE_LIMIT.length() : QUOTA.length());
                ObjectNode parsed = parse(f.getValue());
                changed |= !parsed.equals(into.put(window, parsed));
                warn((into == rateLimits ? window + " limit" : window + " quota"), parsed);
            }
            if (changed) {
                seenAt = Instant.now();
                save();
            }
        }

        /** A header name that starts with this lower-case prefix, in any case. */
        private static boolean startsWith(String name, String prefix) {
            return name.regionMatches(true, 0, prefix, 0, prefix.length());
        }

        /** One header's value: percent used and remaining, reset time, entitlement, overage. */
        static ObjectNode parse(String value) {
            Map<String, String> kv = new LinkedHashMap<>();
            for (String pair : value.split("&")) {
                int eq = pair.indexOf('=');
                if (eq > 0) kv.put(pair.substring(0, eq).trim(), java.net.URLDecoder.decode(pair.substring(eq + 1).trim(), UTF_8));
            }
            ObjectNode o = Json.object();
            double entitlement = number(kv.get("ent"), 0);
            boolean unlimited = entitlement == -1;
            o.put("unlimited", unlimited);
            if (!unlimited) o.put("entitlement", entitlement);
            Double remaining = kv.containsKey("rem") ? number(kv.get("rem"), 100) : null;
            if (remaining != null && !unlimited) {
                o.put("percent_remaining", remaining);
                o.put("percent_used", Math.max(0, Math.min(100, 100 - remaining)));
            }
            if (kv.containsKey("rst")) o.put("resets_at", kv.get("rst"));
            if (kv.containsKey("ov")) o.put("overage", number(kv.get("ov"), 0));
            if (kv.containsKey("ovPerm")) o.put("overage_permitted", Boolean.parseBoolean(kv.get("ovPerm")));
            o.put("raw", value);
            return o;
        }

        private static double number(String s, double otherwise) {
            try {
                return s == null ? otherwise : Double.parseDouble(s);
            } catch (NumberFormatException e) {
                return otherwise;
            }
        }

        private void warn(String what, ObjectNode window) {
            if (!window.has("percent_used")) return;
            double used = window.path("percent_used").asDouble();
            int level = 0;
            for (int at : WARN_AT) {
                if (used >= at) {
                    level = at;
                    break;
                }
            }
            Integer before = warned.put(what, level);
            if (level > (before == null ? 0 : before)) {
                Logs.log().warn("Copilot's {} is {}% used (over {}%){}", what, UsageReport.number(used), level,
                    window.has("resets_at") ? "; it resets at " + window.path("resets_at").asText() : "");
            }
        }

        /** What /usage, the dashboard and `check-usage --json` show: rate_limits and quota_snapshots by window, and when seen. */
        ObjectNode json() {
            ObjectNode o = Json.object();
            o.put("seen_at", seenAt == null ? null : seenAt.toString());
            ObjectNode limits = o.putObject("rate_limits");
            rateLimits.forEach(limits::set);
            ObjectNode snapshots = o.putObject("quota_snapshots");
            quotas.forEach(snapshots::set);
            return o;
        }

        private synchronized void save() {
            try {
                Files.createDirectories(file.getParent());
                Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
                Files.writeString(tmp, Json.pretty(json()), UTF_8);
                Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            } catch (IOException e) {
                Logs.log().debug("could not keep the usage limits in {}: {}", file, describe(e));
            }
        }

        /** What the server kept last (for `check-usage`, which does not call Copilot). */
        static Optional<JsonNode> saved(Path dataDir) {
            Path p = dataDir.resolve(FILE);
            try {
                return Files.isRegularFile(p) ? Json.tryParse(Files.readString(p, UTF_8)) : Optional.empty();
            } catch (IOException e) {
                return Optional.empty();
            }
        }
    }

    /**
     * Where a relay takes its items from: the upstream itself, or a translation of it. Items are read on the
     * request's own thread; {@link LiveStreams} keeps silent streams alive and ends idle ones from outside.
     */
    interface EventSource extends AutoCloseable {
        /** What the upstream stream yields, parsed once: an event, the end, or a failure. */
        sealed interface Item permits Chunk, End, Broken {}

        /** One server-sent event: its name (may be null) and its data; the JSON is parsed on first use, once. */
        final class Chunk implements Item {
            private final String event;
            private String data;
            private JsonNode json;
            private boolean parsed;

            Chunk(String event, String data) {
                this.event = event;
                this.data = data;
            }

            /** An event made here (a translation's chunk): JSON first, text only if someone asks. */
            Chunk(String event, JsonNode json) {
                this.event = event;
                this.json = json;
                this.parsed = true;
            }

            String event() {
                return event;
            }

            String data() {
                if (data == null) data = Json.write(json);
                return data;
            }

            Optional<JsonNode> json() {
                if (!parsed) {
                    json = Json.tryParse(data).orElse(null);
                    parsed = true;
                }
                return Optional.ofNullable(json);
            }
        }

        /** The end of the stream; doneSeen when the upstream said so ([DONE]) rather than just closing. */
        record End(boolean doneSeen) implements Item {}

        /** The stream failed: a read error, an idle limit, the client gone, or the proxy ending it. */
        record Broken(IOException cause) implements Item {}

        /** A whole answer as the stream it is equivalent to: its events (named by their type when {@code named}), then the end. */
        static EventSource whole(List<ObjectNode> events, boolean named) {
            java.util.ArrayDeque<Item> items = new java.util.ArrayDeque<>(events.size() + 1);
            for (ObjectNode e : events) items.add(new Chunk(named ? e.path("type").asText() : null, e));
            items.add(new End(true));
            return new EventSource() {
                @Override
                public Item next() {
                    return items.isEmpty() ? new End(true) : items.poll();
                }

                @Override
                public boolean ready() {
                    return true;
                }

                @Override
                public void attach(SseWriter out, Supplier<Frame> keepAlive) {
                }

                @Override
                public void close() {
                }
            };
        }

        /** The next item; blocks until one is there. */
        Item next();

        /** True when the next item is already here, so a burst can be written with one flush. */
        boolean ready();

        /** Lets the heartbeat keep this stream's client alive while the upstream is silent. */
        void attach(SseWriter out, Supplier<Frame> keepAlive);

        @Override
        void close();
    }

    /**
     * Upstream server-sent events, read on the request's thread only as fast as the relay writes them (so no
     * buffer grows between Copilot and a slow client, and no second thread is held per stream). From outside,
     * {@link LiveStreams} ends a stream that stays silent past the idle limit, or at shutdown, by closing the body:
     * the blocked read then fails and the relay writes the API's error event.
     */
    static final class UpstreamEvents implements EventSource {
        private final InputStream in;
        private final SseReader reader;
        private final Duration idleLimit;
        private final Duration keepAliveEvery;
        private final LiveStreams registry;
        private volatile IOException stopped;
        private volatile long lastRead = System.nanoTime();
        private volatile SseWriter out;
        private volatile Supplier<Frame> keepAlive;
        private boolean over;

        UpstreamEvents(InputStream in, Duration idleLimit, Duration keepAliveEvery, LiveStreams registry) {
            this.in = in;
            this.reader = new SseReader(in);
            this.idleLimit = idleLimit;
            this.keepAliveEvery = keepAliveEvery;
            this.registry = registry;
            registry.add(this);
        }

        @Override
        public Item next() {
            if (over) return new End(false);
            try {
                SseEvent e = reader.next();
                lastRead = System.nanoTime();
                if (e == null || "[DONE]".equals(e.data())) {
                    over = true;
                    return new End(e != null);
                }
                return new Chunk(e.event(), e.data());
            } catch (IOException e) {
                over = true;
                return new Broken(stopped != null ? stopped : e);
            }
        }

        @Override
        public boolean ready() {
            try {
                return !over && reader.ready();
            } catch (IOException e) {
                return false;
            }
        }

        @Override
        public void attach(SseWriter out, Supplier<Frame> keepAlive) {
            this.keepAlive = keepAlive;
            this.out = out;
        }

        /**
         * Called by the heartbeat: the end when the client has left (the relay may be waiting on Copilot, and would
         * not notice before its next write), a keep-alive after a silence towards the client, the end after a
         * silence from Copilot.
         */
        void beat(long now) {
            if (stopped != null) return;
            SseWriter w = out;
            if (w != null && w.clientLeft()) {
                stop(new ClientDisconnected());
                return;
            }
            if (now - lastRead >= idleLimit.toNanos()) {
                stop(new IOException("no event from Copilot for " + idleLimit.toSeconds() + "s"));
                return;
            }
            if (w != null && now - w.lastWrite() >= keepAliveEvery.toNanos()) {
                Threads.start(() -> {
                    if (!w.tryWrite(keepAlive.get())) stop(new ClientDisconnected());
                });
            }
        }

        /** Ends the stream from outside: the relay's next item is this failure, and the upstream is closed. */
        void stop(IOException reason) {
            stopped = reason;
            close();
        }

        /** Closing the body cancels the upstream request (and wakes a read that waits on it). */
        @Override
        public void close() {
            registry.remove(this);
            try {
                in.close();
            } catch (IOException e) {
                Logs.log().debug("closing the upstream stream: {}", describe(e));
            }
        }
    }

    /**
     * A Responses event stream seen as chat chunks, so the pivot serves responses-only models to every relay:
     * each upstream event goes through ResponsesStreamToChat, and its chunks are handed on as items, not text.
     */
    static final class ResponsesAsChat implements EventSource {
        private final EventSource upstream;
        private final ResponsesStreamToChat machine;
        private final java.util.ArrayDeque<Item> ready = new java.util.ArrayDeque<>();
        private boolean over;

        ResponsesAsChat(EventSource upstream, ResponsesStreamToChat machine) {
            this.upstream = upstream;
            this.machine = machine;
        }

        @Override
        public Item next() {
            while (ready.isEmpty()) {
                if (over) return new End(false);
                step();
            }
            return ready.poll();
        }

        /**
         * True when a chat item is here. Upstream events already here are translated first: many (item added, part
         * added, done) give no chat chunk, and a relay told "more is coming" for one of those would wait on the
         * network with its last chunks unflushed.
         */
        @Override
        public boolean ready() {
            while (ready.isEmpty() && !over && upstream.ready()) step();
            return !ready.isEmpty();
        }

        /** One upstream item through the translation. */
        private void step() {
            Item item = upstream.next();
            if (item instanceof Broken) {
                over = true;
                ready.add(item);
            } else if (item instanceof End) {
                queue(machine.finish());
                end();
            } else if (item instanceof Chunk c && c.json().isPresent()) {
                queue(machine.onEvent(c.event(), c.json().get()));
                if (machine.ended()) end();
            }
        }

        @Override
        public void attach(SseWriter out, Supplier<Frame> keepAlive) {
            upstream.attach(out, keepAlive);
        }

        private void queue(List<ObjectNode> chunks) {
            for (ObjectNode c : chunks) ready.add(new Chunk(null, c));
        }

        /** The chat stream's end: an error chunk for a failed response, else [DONE]. */
        private void end() {
            over = true;
            Optional<String> failure = machine.failure();
            if (failure.isPresent()) {
                ObjectNode error = Json.object();
                error.putObject("error").put("message", failure.get()).put("type", "api_error");
                ready.add(new Chunk(null, error));
            } else {
                ready.add(new End(true));
            }
        }

        @Override
        public void close() {
            upstream.close();
        }
    }

    // ==== 6.1 Upstream transport: Jetty's HTTP client, the response body reader, proxies, SSE reading ====

    /**
     * The upstream HTTP client: Jetty's, HTTP/1.1, one per proxy setting in the process. Chosen by measurement:
     * on a small proxied request the JDK's client was the largest share of the CPU (a CompletableFuture chain
     * over three threads, and a new thread per answer on a 2-core machine); Jetty's reads each answer on the
     * thread that asked for it. An optional proxy comes from the environment.
     */
    static final class Http {
        static final Duration CONNECT_TIMEOUT = Duration.ofSeconds(10);
        /** A pooled keep-alive connection left unused this long is closed. */
        static final Duration POOL_IDLE = Duration.ofSeconds(60);
        /** Threads the clients may use for I/O; the answers themselves are read on the requests' threads. */
        static final int MAX_THREADS = 64;
        private static final Map<String, org.eclipse.jetty.client.HttpClient> CLIENTS = new java.util.concurrent.ConcurrentHashMap<>();

        private final org.eclipse.jetty.client.HttpClient client;

        private Http(org.eclipse.jetty.client.HttpClient client) {
            this.client = client;
        }

        static Http create(Settings settings) {
            if (!settings.proxyEnv()) return new Http(CLIENTS.computeIfAbsent("direct", k -> start(null)));
            EnvProxySelector selector = EnvProxySelector.from(settings.env());
            Logs.log().info("upstream proxy from environment: {}", selector.describe());
            return new Http(CLIENTS.computeIfAbsent("proxy " + selector.key(), k -> start(selector)));
        }

        private static org.eclipse.jetty.client.HttpClient start(EnvProxySelector proxies) {
            var pool = new org.eclipse.jetty.util.thread.QueuedThreadPool(MAX_THREADS, 1, 10_000);
            pool.setName("upstream-http");
            pool.setDaemon(true);
            pool.setReservedThreads(0);
            // the threads of a burst leave together once idle, not one per idle period
            pool.setMaxEvictCount(MAX_THREADS);
            var connector = new org.eclipse.jetty.io.ClientConnector();
            connector.setSelectors(1);
            connector.setExecutor(pool);
            var client = new org.eclipse.jetty.client.HttpClient(new org.eclipse.jetty.client.transport.HttpClientTransportOverHTTP(connector));
            client.setExecutor(pool);
            client.setScheduler(new org.eclipse.jetty.util.thread.ScheduledExecutorScheduler("upstream-http-timer", true));
            client.setConnectTimeout(CONNECT_TIMEOUT.toMillis());
            client.setIdleTimeout(POOL_IDLE.toMillis());
            client.setFollowRedirects(true);
            // As the editor's own calls: no cookies kept, no client name added, no compressed answers asked for.
            client.setHttpCookieStore(new org.eclipse.jetty.http.HttpCookieStore.Empty());
            client.setUserAgentField(null);
            client.getContentDecoderFactories().clear();
            // Each open stream holds a connection: Jetty's default of 64 per destination would queue the 65th.
            client.setMaxConnectionsPerDestination(4096);
            client.setDestinationIdleTimeout(POOL_IDLE.toMillis());
            if (proxies != null) proxies.configure(client);
            try {
                client.start();
            } catch (Exception e) {
                throw new IllegalStateException("cannot start the upstream HTTP client: " + describe(e), e);
            }
            return client;
        }

        /** One request to make: method, URI, headers in order, how long to wait for the answer's headers, a body. */
        static final class Call {
            final String method;
            final URI uri;
            final List<String> headers = new ArrayList<>(24);
            Duration timeout = Duration.ofSeconds(30);
            /** How long the connection may stay silent once the answer has begun; past it the read fails. */
            Duration idle = Duration.ofMinutes(11);
            /** An event stream: closed early, it is cut off rather than read to its end. */
            boolean streaming;
            byte[] body;

            Call(String method, URI uri) {
                this.method = method;
                this.uri = uri;
            }

            static Call get(URI uri) {
                return new Call("GET", uri);
            }

            static Call post(URI uri, String contentType, byte[] body) {
                Call c = new Call("POST", uri).header("content-type", contentType);
                c.body = body;
                return c;
            }

            Call header(String name, String value) {
                headers.add(name);
                headers.add(value);
                return this;
            }

            Call timeout(Duration d) {
                timeout = d;
                return this;
            }

            Call streaming(boolean yes) {
                streaming = yes;
                return this;
            }

            Call idle(Duration d) {
                idle = d;
                return this;
            }
        }

        /** Copilot's or GitHub's answer: its status and headers, and its body as it arrives. */
        record Reply(int statusCode, org.eclipse.jetty.http.HttpFields headers, BodyStream body) {
            Optional<String> header(String name) {
                return Optional.ofNullable(headers.get(name));
            }
        }

        /** Sends and waits for the answer's headers (at most the call's timeout). */
        Reply send(Call call) {
            InFlight exchange = begin(call);
            try {
                return exchange.reply.get();
            } catch (ExecutionException e) {
                throw failure(call.uri, e.getCause());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                exchange.abort(e);
                throw new UpstreamUnreachable("Interrupted while calling " + origin(call.uri), e);
            }
        }

        /** Sends; the exchange completes at the answer's headers, or fails (unreachable, no headers in time). */
        InFlight begin(Call call) {
            InFlight exchange = new InFlight(call);
            exchange.attempt(client, true);
            return exchange;
        }

        /**
         * One call in flight. A POST is resent once when a reused keep-alive connection turns out closed before any
         * byte of the answer, as the JDK's client did (2 in 3,353 Claude Code streams had failed with 502 before).
         * Never after a failure on a fresh connection: Copilot may have read that request, and a second would be a
         * second billed call.
         */
        static final class InFlight {
            final Call call;
            final CompletableFuture<Reply> reply = new CompletableFuture<>();
            private org.eclipse.jetty.client.Request request;
            /** Why the call was aborted; a resend then never goes out. Guarded by this, as is request. */
            private Throwable abortedBy;
            private volatile org.eclipse.jetty.util.thread.Scheduler.Task deadline;

            InFlight(Call call) {
                this.call = call;
            }

            private void attempt(org.eclipse.jetty.client.HttpClient client, boolean first) {
                var r = client.newRequest(call.uri).method(call.method)
                    .idleTimeout(call.idle.toMillis(), TimeUnit.MILLISECONDS)
                    .headers(h -> {
                        for (int i = 0; i < call.headers.size(); i += 2) h.add(call.headers.get(i), call.headers.get(i + 1));
                    });
                if (call.body != null) r.body(new org.eclipse.jetty.client.BytesRequestContent(call.body));
                BodyStream body = new BodyStream(r, !call.streaming);
                boolean[] begun = new boolean[1];
                r.onResponseBegin(x -> begun[0] = true);
                r.onResponseHeaders(x -> {
                    cancelDeadline();
                    reply.complete(new Reply(x.getStatus(), x.getHeaders(), body));
                });
                r.onResponseContentAsync((x, chunk, demand) -> body.offer(chunk, demand));
                synchronized (this) {
                    if (abortedBy != null) {
                        fail(body, abortedBy);
                        return;
                    }
                    request = r;
                }
                if (first) {
                    deadline = client.getScheduler().schedule(() -> {
                        if (reply.completeExceptionally(new UpstreamTimeout("No answer from " + origin(call.uri) + " in time", null))) {
                            abort(new java.util.concurrent.TimeoutException("no answer in time"));
                        }
                    }, call.timeout.toMillis(), TimeUnit.MILLISECONDS);
                }
                r.send(result -> {
                    if (!result.isFailed()) {
                        body.succeeded();
                        return;
                    }
                    Throwable cause = result.getFailure();
                    // not r.getAbortCause(): Jetty aborts the request with the EOF itself; our own aborts complete the reply first
                    if (first && !begun[0] && !reply.isDone() && reused(r) && staleConnection(cause)) {
                        attempt(client, false);
                        return;
                    }
                    fail(body, cause);
                });
            }

            private void fail(BodyStream body, Throwable cause) {
                body.failed(cause);
                if (reply.completeExceptionally(cause)) cancelDeadline();
            }

            private void cancelDeadline() {
                org.eclipse.jetty.util.thread.Scheduler.Task t = deadline;
                if (t != null) t.cancel();
            }

            /** Ends the call and frees its connection (a client that left, a shutdown, a wait given up). */
            void abort(Throwable why) {
                reply.completeExceptionally(why);
                org.eclipse.jetty.client.Request r;
                synchronized (this) {
                    if (abortedBy == null) abortedBy = why;
                    r = request;
                }
                if (r != null) r.abort(why);
            }

            /**
             * The request went out on a connection that had already carried an answer, as Jetty counts them: a pooled
             * keep-alive connection, reused. A fresh connection has carried none.
             */
            private static boolean reused(org.eclipse.jetty.client.Request r) {
                return r.getConnection() instanceof org.eclipse.jetty.client.transport.internal.HttpConnectionOverHTTP c && c.getMessagesIn() > 0;
            }

            /**
             * The server closed the connection (a pooled one, as the request went out on it) before any byte of an
             * answer: an I/O failure that is not a failure to connect at all.
             */
            private static boolean staleConnection(Throwable t) {
                return t instanceof IOException && !(t instanceof ConnectException || t instanceof java.net.SocketTimeoutException
                    || t instanceof java.net.UnknownHostException);
            }
        }

        /** A failed call as the exception the error handlers know: unreachable (502) or no answer in time (504). */
        static RuntimeException failure(URI uri, Throwable e) {
            if (e instanceof java.util.concurrent.CompletionException && e.getCause() != null) e = e.getCause();
            if (e instanceof UpstreamUnreachable u) return u;
            if (e instanceof ConnectException || e instanceof java.net.SocketTimeoutException || e instanceof java.net.UnknownHostException
                    || e instanceof java.nio.channels.UnresolvedAddressException) {
                return new UpstreamUnreachable("Cannot reach " + origin(uri) + " (" + brief(e) + ")", e);
            }
            if (e instanceof java.util.concurrent.TimeoutException) return new UpstreamTimeout("No answer from " + origin(uri) + " in time", e);
            if (e instanceof RuntimeException r) return r;
            return new UpstreamUnreachable("The connection to " + origin(uri) + " failed (" + brief(e) + ")", e);
        }

        /** Jetty's exceptions whose message is its connection's state ("HttpConnectionOverHTTP@3ab06ee8::..."). */
        private static final java.util.regex.Pattern OBJECT_DUMP = java.util.regex.Pattern.compile("[A-Za-z]@[0-9a-f]{4,}");

        /**
         * What went wrong on a connection, in a few words for a person. Jetty names its whole connection state (about
         * 1 KB) as the message of an early end or a reset: that belongs in its debug log, not in an error event.
         */
        static String brief(Throwable e) {
            for (Throwable t = e; t != null; t = t.getCause()) {
                if (t instanceof java.io.EOFException || t instanceof java.nio.channels.ClosedChannelException) {
                    return "the connection was closed before the answer was complete";
                }
                if (t instanceof java.util.concurrent.TimeoutException || t instanceof java.net.SocketTimeoutException) {
                    return "the connection timed out";
                }
                if (t instanceof ConnectException) return "the connection was refused";
                if (t instanceof java.net.UnknownHostException || t instanceof java.nio.channels.UnresolvedAddressException) {
                    return "the host name could not be resolved";
                }
            }
            String m = describe(e);
            if (OBJECT_DUMP.matcher(m).find() || m.length() > 200) return "the connection failed (" + e.getClass().getSimpleName() + ")";
            return m;
        }

        /** scheme://host:port, without any user-info (a proxy's or a URL's password never reaches a message or log). */
        static String origin(URI uri) {
            return uri.getScheme() + "://" + uri.getHost() + (uri.getPort() > 0 ? ":" + uri.getPort() : "");
        }

        /** A URL to show: any user-info (user:password@) is dropped. */
        static String shown(String url) {
            try {
                URI u = URI.create(url);
                if (u.getRawUserInfo() == null) return url;
                return origin(u) + (u.getRawPath() == null ? "" : u.getRawPath());
            } catch (IllegalArgumentException e) {
                return url.replaceFirst("//[^/@]*@", "//");
            }
        }

        /** Up to limit bytes of a body as text; what arrived before a failure is kept. */
        static String readLimited(Reply reply, int limit) {
            java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
            try (InputStream in = reply.body()) {
                byte[] buf = new byte[8192];
                for (int n; out.size() < limit && (n = in.read(buf, 0, Math.min(buf.length, limit - out.size()))) > 0; ) out.write(buf, 0, n);
            } catch (IOException e) {
                // keep what was read
            }
            return out.toString(UTF_8);
        }
    }

    /**
     * An answer's body as an InputStream, fed by Jetty's client a few chunks ahead of the reader at most (the next
     * chunk is asked for as the reader takes one, so nothing piles up between Copilot and a slow client). Each chunk
     * is ours once it arrived: what came before a failure is read out first and the failure comes after it, so a
     * cut stream loses no event that had reached us. close() from any thread ends the exchange and wakes a reader.
     */
    static final class BodyStream extends InputStream {
        /** Chunks asked for ahead of the reader. */
        static final int WINDOW = 4;
        /** How long close() waits for the rest of an answer that is not a stream (its end is normally already here). */
        static final Duration DRAIN_LIMIT = Duration.ofSeconds(1);
        private static final Object END = new Object();
        private static final Object CLOSED = new Object();

        private final org.eclipse.jetty.client.Request request;
        /**
         * A body that is not a stream is read to its end on close (a JSON reader stops short of it), so that the
         * exchange is over and its connection back in the pool before the caller's next request goes out.
         */
        private final boolean drainOnClose;
        private final java.util.concurrent.LinkedBlockingQueue<Object> queue = new java.util.concurrent.LinkedBlockingQueue<>();
        private final java.util.concurrent.atomic.AtomicInteger ahead = new java.util.concurrent.atomic.AtomicInteger();
        /** The demand held back while the window is full; run when the reader takes a chunk. */
        private final java.util.concurrent.atomic.AtomicReference<Runnable> heldDemand = new java.util.concurrent.atomic.AtomicReference<>();
        private volatile boolean closed;
        private org.eclipse.jetty.io.Content.Chunk chunk;
        private Object last;

        BodyStream(org.eclipse.jetty.client.Request request, boolean drainOnClose) {
            this.request = request;
            this.drainOnClose = drainOnClose;
        }

        /** Jetty's content callback: the chunk is kept, and more is asked for while the window has room. */
        void offer(org.eclipse.jetty.io.Content.Chunk c, Runnable demand) {
            if (closed) {
                request.abort(new IOException("closed"));
                return;
            }
            if (!c.hasRemaining()) {
                demand.run();
                return;
            }
            c.retain();
            queue.add(c);
            if (ahead.incrementAndGet() < WINDOW) {
                demand.run();
            } else {
                heldDemand.set(demand);
                // the reader may have taken chunks meanwhile
                if (ahead.get() < WINDOW) release();
            }
        }

        void succeeded() {
            queue.add(END);
        }

        void failed(Throwable t) {
            queue.add(t);
        }

        private void release() {
            Runnable d = heldDemand.getAndSet(null);
            if (d != null) d.run();
        }

        /** The chunk with bytes in it, or null at the end or when nothing arrived within the wait. */
        private org.eclipse.jetty.io.Content.Chunk current(long waitNanos) throws IOException {
            if (closed) throw new IOException("closed");
            while (chunk == null || !chunk.hasRemaining()) {
                if (chunk != null) {
                    chunk.release();
                    chunk = null;
                    ahead.decrementAndGet();
                    release();
                }
                if (last != null) return ended();
                Object next;
                try {
                    next = waitNanos == Long.MAX_VALUE ? queue.take() : queue.poll(waitNanos, TimeUnit.NANOSECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new java.io.InterruptedIOException("interrupted while reading from Copilot");
                }
                if (next == null) return null;
                if (next instanceof org.eclipse.jetty.io.Content.Chunk c) chunk = c;
                else last = next;
            }
            return chunk;
        }

        private org.eclipse.jetty.io.Content.Chunk ended() throws IOException {
            if (last == END) return null;
            if (last == CLOSED) throw new IOException("closed");
            Throwable t = (Throwable) last;
            throw t instanceof IOException io ? io : new IOException(Http.brief(t), t);
        }

        @Override
        public int read() throws IOException {
            org.eclipse.jetty.io.Content.Chunk c = current(Long.MAX_VALUE);
            return c == null ? -1 : c.getByteBuffer().get() & 0xff;
        }

        @Override
        public int read(byte[] into, int off, int len) throws IOException {
            if (len == 0) return 0;
            org.eclipse.jetty.io.Content.Chunk c = current(Long.MAX_VALUE);
            if (c == null) return -1;
            ByteBuffer b = c.getByteBuffer();
            int n = Math.min(len, b.remaining());
            b.get(into, off, n);
            return n;
        }

        /** Bytes readable now without blocking: those of the chunks already here. */
        @Override
        public int available() {
            long n = chunk == null ? 0 : chunk.remaining();
            for (Object o : queue) if (o instanceof org.eclipse.jetty.io.Content.Chunk c) n += c.remaining();
            return (int) Math.min(Integer.MAX_VALUE, n);
        }

        /** Skips the rest of the answer, up to its end, for at most DRAIN_LIMIT. */
        private void readToEnd() {
            long until = System.nanoTime() + DRAIN_LIMIT.toNanos();
            try {
                for (var c = current(until - System.nanoTime()); c != null; c = current(until - System.nanoTime())) {
                    c.getByteBuffer().position(c.getByteBuffer().limit());
                }
            } catch (IOException e) {
                // the answer failed: nothing to reuse
            }
        }

        @Override
        public void close() {
            if (closed) return;
            // on the reader's thread; a stream is closed early on purpose (and from the heartbeat), so it is cut
            if (drainOnClose) readToEnd();
            closed = true;
            if (!drainOnClose || last != END) request.abort(new IOException("closed"));
            // the reader's own chunk is the reader's to drop; those still queued go back now
            for (Object o; (o = queue.poll()) != null; ) if (o instanceof org.eclipse.jetty.io.Content.Chunk c) c.release();
            queue.add(CLOSED);
        }
    }

    /**
     * HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case) as curl reads them, given to Jetty's client as one proxy per
     * scheme that lets the NO_PROXY hosts go direct. Described without credentials.
     */
    static final class EnvProxySelector {
        private final Optional<URI> httpsProxy;
        private final Optional<URI> httpProxy;
        private final List<String> noProxy;

        EnvProxySelector(Optional<URI> httpsProxy, Optional<URI> httpProxy, List<String> noProxy) {
            this.httpsProxy = httpsProxy;
            this.httpProxy = httpProxy;
            this.noProxy = noProxy;
        }

        static EnvProxySelector from(Map<String, String> env) {
            Optional<URI> http = proxyUri(env, "HTTP_PROXY");
            Optional<URI> https = proxyUri(env, "HTTPS_PROXY").or(() -> http);
            String no = first(env, "NO_PROXY").orElse("");
            List<String> entries = new ArrayList<>();
            for (String e : no.split(",")) if (!e.isBlank()) entries.add(e.trim().toLowerCase(Locale.ROOT));
            return new EnvProxySelector(https, http, entries);
        }

        private static Optional<String> first(Map<String, String> env, String name) {
            return Optional.ofNullable(env.get(name)).or(() -> Optional.ofNullable(env.get(name.toLowerCase(Locale.ROOT))))
                .filter(v -> !v.isBlank());
        }

        private static Optional<URI> proxyUri(Map<String, String> env, String name) {
            return first(env, name).map(v -> URI.create(v.contains("://") ? v : "http://" + v));
        }

        boolean bypass(String host, int port) {
            if (host == null) return false;
            String h = host.toLowerCase(Locale.ROOT);
            if (h.startsWith("[") && h.endsWith("]")) h = h.substring(1, h.length() - 1);
            for (String entry : noProxy) {
                if (entry.equals("*")) return true;
                String e = entry;
                int colon = e.lastIndexOf(':');
                if (colon > 0 && !e.contains("]") && e.indexOf(':') == colon) {
                    if (!e.substring(colon + 1).equals(String.valueOf(port))) continue;
                    e = e.substring(0, colon);
                }
                if (e.startsWith("*.")) e = e.substring(1);
                if (e.startsWith(".") ? h.endsWith(e) || h.equals(e.substring(1)) : h.equals(e) || h.endsWith("." + e)) return true;
            }
            return false;
        }

        /** Gives Jetty's client one proxy per scheme, each taking the requests this selector sends through it. */
        void configure(org.eclipse.jetty.client.HttpClient client) {
            httpsProxy.ifPresent(p -> client.getProxyConfiguration().addProxy(new SchemeProxy(p, "https")));
            httpProxy.ifPresent(p -> client.getProxyConfiguration().addProxy(new SchemeProxy(p, "http")));
            // Basic credentials from a proxy URL's user-info, offered only to that proxy
            for (Optional<URI> proxy : List.of(httpsProxy, httpProxy)) {
                proxy.filter(p -> p.getRawUserInfo() != null && p.getRawUserInfo().contains(":")).ifPresent(p -> {
                    String[] parts = p.getRawUserInfo().split(":", 2);
                    client.getAuthenticationStore().addAuthenticationResult(new org.eclipse.jetty.client.BasicAuthentication.BasicResult(
                        proxyOrigin(p), org.eclipse.jetty.http.HttpHeader.PROXY_AUTHORIZATION,
                        java.net.URLDecoder.decode(parts[0], UTF_8), java.net.URLDecoder.decode(parts[1], UTF_8)));
                });
            }
        }

        /** What tells two proxy settings apart (credentials included), to share one client per setting. */
        String key() {
            return httpsProxy.map(URI::toString).orElse("-") + " " + httpProxy.map(URI::toString).orElse("-") + " " + String.join(",", noProxy);
        }

        /** The URI's port, or its scheme's default. */
        private static int port(URI u) {
            return u.getPort() > 0 ? u.getPort() : "https".equalsIgnoreCase(u.getScheme()) ? 443 : 80;
        }

        private static URI proxyOrigin(URI p) {
            return URI.create(p.getScheme() + "://" + p.getHost() + ":" + port(p));
        }

        /** A proxy for one scheme's requests, except those NO_PROXY lets go direct. */
        private final class SchemeProxy extends org.eclipse.jetty.client.HttpProxy {
            private final String scheme;

            SchemeProxy(URI proxy, String scheme) {
                super(new org.eclipse.jetty.client.Origin.Address(proxy.getHost(), port(proxy)), "https".equalsIgnoreCase(proxy.getScheme()));
                this.scheme = scheme;
            }

            @Override
            public boolean matches(org.eclipse.jetty.client.Origin origin) {
                return origin.getScheme().equalsIgnoreCase(scheme) && !bypass(origin.getAddress().getHost(), origin.getAddress().getPort());
            }
        }

        String describe() {
            return "https via " + httpsProxy.map(Http::origin).orElse("none") + ", http via " + httpProxy.map(Http::origin).orElse("none")
                + (noProxy.isEmpty() ? "" : ", bypassing " + String.join(",", noProxy));
        }
    }

    /** One server-sent event: the event name (or null) and its data lines joined with newlines. */
    record SseEvent(String event, String data) {}

    /**
     * An event-stream reader: a blank line dispatches, data lines join with \n, one leading space is stripped, lines
     * end with LF, CRLF or CR, comments (":") and other fields (id, retry) are skipped, an event cut short by the end
     * is still given. Bytes are split into lines before they are decoded, so a character split across reads is
     * whole. {@link #ready()} says whether a whole event is already here, so that a relay never waits on the network
     * with events it has not flushed.
     */
    static final class SseReader {
        private final InputStream in;
        private byte[] buf = new byte[8192];
        /** The bytes not yet read as lines: buf[start, end). */
        private int start;
        private int end;
        private boolean eof;
        private boolean ended;
        /** The last line ended with CR: a LF right after it belongs to that line end. */
        private boolean skipLf;
        private boolean first = true;
        private String event;
        private StringBuilder data;
        /** An event that ready() found whole, for next() to give. */
        private SseEvent pending;

        SseReader(InputStream in) {
            this.in = in;
        }

        /** True when next() will not wait: a whole event is here (read without blocking), or the stream has ended. */
        boolean ready() throws IOException {
            if (pending != null || eof) return true;
            while ((pending = parse()) == null) {
                int n = in.available();
                if (n <= 0) return false;
                if (!fill(n)) return true;
            }
            return true;
        }

        /** The next event, or null at the end of the stream. */
        SseEvent next() throws IOException {
            if (pending != null) {
                SseEvent e = pending;
                pending = null;
                return e;
            }
            while (true) {
                SseEvent e = parse();
                if (e != null) return e;
                if (eof || !fill(buf.length)) return finish();
            }
        }

        /** Reads up to max bytes (blocking until at least one arrives); false at the end of the stream. */
        private boolean fill(int max) throws IOException {
            if (start > 0 && start == end) {
                start = 0;
                end = 0;
            }
            if (end == buf.length) {
                if (start > 0) {
                    System.arraycopy(buf, start, buf, 0, end - start);
                    end -= start;
                    start = 0;
                } else {
                    buf = java.util.Arrays.copyOf(buf, buf.length * 2);
                }
            }
            int n = in.read(buf, end, Math.min(max, buf.length - end));
            if (n < 0) {
                eof = true;
                return false;
            }
            end += n;
            return true;
        }

        /** Takes the whole lines that are here; the event they complete, or null when they complete none. */
        private SseEvent parse() {
            while (start < end) {
                if (skipLf) {
                    skipLf = false;
                    if (buf[start] == '\n') {
                        start++;
                        continue;
                    }
                }
                int eol = start;
                while (eol < end && buf[eol] != '\n' && buf[eol] != '\r') eol++;
                if (eol == end) return null;
                String line = new String(buf, start, eol - start, UTF_8);
                skipLf = buf[eol] == '\r';
                start = eol + 1;
                SseEvent e = line(line);
                if (e != null) return e;
            }
            return null;
        }

        /** At the end of the stream: a last line without its line end, and an event without its blank line, count. */
        private SseEvent finish() {
            if (ended) return null;
            ended = true;
            if (start < end) {
                line(new String(buf, start, end - start, UTF_8));
                start = end;
            }
            return dispatch();
        }

        private SseEvent line(String line) {
            if (first) {
                first = false;
                if (line.startsWith("\uFEFF")) line = line.substring(1);
            }
            if (line.isEmpty()) return dispatch();
            if (line.startsWith(":")) return null;
            int colon = line.indexOf(':');
            String field = colon < 0 ? line : line.substring(0, colon);
            String value = colon < 0 ? "" : line.substring(colon + 1);
            if (value.startsWith(" ")) value = value.substring(1);
            if (field.equals("event")) event = value;
            else if (field.equals("data")) data = data == null ? new StringBuilder(value) : data.append('\n').append(value);
            return null;
        }

        private SseEvent dispatch() {
            if (data == null && event == null) return null;
            SseEvent e = new SseEvent(event, data == null ? "" : data.toString());
            event = null;
            data = null;
            return e;
        }
    }

    // ==== 7. GitHub auth ====

    /** A GitHub token and where it came from (for messages; never printed unless --show-token). */
    record GitHubToken(String value, String source, Origin origin) {
        /** Where a token can come from, which decides the one step that fixes a refused one. */
        enum Origin { OPTION, OUR_ENV, STORED, AMBIENT }

        GitHubToken(String value, String source) {
            this(value, source, Origin.OPTION);
        }

        String describe() {
            return "the GitHub token from " + source;
        }

        /** The one step that fixes a refused token from this source. */
        String fix() {
            return switch (origin) {
                case OPTION -> "pass a token from `copilot-api auth` with --github-token, or leave the option out to use the stored login";
                case OUR_ENV -> "set COPILOT_API_GITHUB_TOKEN to a token from `copilot-api auth`, or unset it to use the stored login";
                case STORED -> "run `copilot-api auth` to log in again";
                case AMBIENT -> "run `copilot-api auth` once to log in: a stored login wins over " + source
                    + " (which the gh CLI, Codespaces or CI set for other purposes)";
            };
        }

        @Override
        public String toString() {
            return "GitHubToken[source=" + source + "]";
        }
    }

    /** What the device flow shows the user and how it waits; tests script it. */
    interface Console {
        void say(String line);

        void sleep(Duration d) throws InterruptedException;

        static Console system() {
            return new Console() {
                @Override
                public void say(String line) {
                    System.out.println(line);
                }

                @Override
                public void sleep(Duration d) throws InterruptedException {
                    Thread.sleep(d.toMillis());
                }
            };
        }
    }

    record DeviceCode(String deviceCode, String userCode, String verificationUri, long expiresIn, long interval) {}

    /** GitHub login: token sources in order, the token file, the OAuth device flow, and the usage report. */
    static final class GitHubAuth {
        static final String CLIENT_ID = "Iv1.b507a08c87ecfe98";
        static final String SCOPE = "read:user";
        static final String DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";
        static final List<String> ENV_TOKENS = List.of("COPILOT_API_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN");
        /** Tokens other tools put in the environment; used only when there is no login of our own. */
        static final List<String> AMBIENT_TOKENS = List.of("GH_TOKEN", "GITHUB_TOKEN");

        private final Settings settings;
        private final Http http;

        GitHubAuth(Settings settings, Http http) {
            this.settings = settings;
            this.http = http;
        }

        TokenStore store() {
            return new TokenStore(settings.dataDir(), settings.ownsDataDir());
        }

        static Optional<String> envTokenName(Map<String, String> env) {
            return ENV_TOKENS.stream().filter(n -> env.get(n) != null && !env.get(n).isBlank()).findFirst();
        }

        /**
         * --github-token, then COPILOT_API_GITHUB_TOKEN, then the login `auth` stored, and only when there is none
         * GH_TOKEN or GITHUB_TOKEN: those are set by the gh CLI, Codespaces and CI to tokens Copilot refuses.
         */
        Optional<GitHubToken> existingToken() {
            if (settings.githubTokenOption().isPresent()) {
                return Optional.of(new GitHubToken(settings.githubTokenOption().get().trim(), "--github-token", GitHubToken.Origin.OPTION));
            }
            Optional<GitHubToken> ours = envToken("COPILOT_API_GITHUB_TOKEN", GitHubToken.Origin.OUR_ENV);
            if (ours.isPresent()) return ours;
            Optional<GitHubToken> stored = store().load().map(t -> stored(t));
            if (stored.isPresent()) return stored;
            for (String name : AMBIENT_TOKENS) {
                Optional<GitHubToken> ambient = envToken(name, GitHubToken.Origin.AMBIENT);
                if (ambient.isPresent()) return ambient;
            }
            return Optional.empty();
        }

        private Optional<GitHubToken> envToken(String name, GitHubToken.Origin origin) {
            return Optional.ofNullable(settings.env().get(name)).filter(v -> !v.isBlank()).map(v -> new GitHubToken(v.trim(), "$" + name, origin));
        }

        GitHubToken stored(String token) {
            return new GitHubToken(token, "the stored login (" + settings.tokenFile() + ")", GitHubToken.Origin.STORED);
        }

        GitHubToken tokenOrLogin(Console console) throws InterruptedException {
            Optional<GitHubToken> existing = existingToken();
            if (existing.isPresent()) {
                Logs.log().info("using the GitHub token from {}", existing.get().source());
                if (settings.showToken()) System.out.println("GitHub token: " + existing.get().value());
                return existing.get();
            }
            console.say("No GitHub token found; logging in with GitHub's device flow.");
            String token = deviceFlow(console);
            store().save(token);
            console.say("Logged in. Token saved to " + settings.tokenFile());
            if (settings.showToken()) console.say("GitHub token: " + token);
            return stored(token);
        }

        /** The OAuth device flow: show the code, then poll at the interval GitHub asks for. */
        String deviceFlow(Console console) throws InterruptedException {
            DeviceCode code = requestDeviceCode();
            boolean copied = Clipboard.copy(code.userCode());
            console.say("To log in, open " + code.verificationUri() + " and enter the code: " + code.userCode()
                + (copied ? "  (copied to the clipboard)" : ""));
            console.say("Waiting for you to enter the code (Ctrl-C to cancel)...");
            long interval = Math.max(0, code.interval());
            Instant deadline = Instant.now().plusSeconds(code.expiresIn() > 0 ? code.expiresIn() : 900);
            while (true) {
                console.sleep(Duration.ofSeconds(interval));
                JsonNode answer = pollDeviceCode(code);
                if (answer.path("access_token").isTextual() && !answer.path("access_token").asText().isBlank()) {
                    return answer.path("access_token").asText();
                }
                String error = answer.path("error").asText("");
                switch (error) {
                    case "authorization_pending" -> { }
                    case "slow_down" -> interval = answer.has("interval") ? answer.path("interval").asLong() : interval + 5;
                    case "expired_token" -> throw new UserFacingException(
                        "the device code expired before it was entered; run the command again for a new code");
                    case "access_denied" -> throw new UserFacingException("the login was cancelled on GitHub (access denied)");
                    default -> throw new UserFacingException("GitHub's device flow failed: "
                        + (error.isEmpty() ? Redact.shorten(Json.write(answer)) : error + " " + answer.path("error_description").asText("")).trim());
                }
                if (Instant.now().isAfter(deadline)) {
                    throw new UserFacingException("the device code expired before it was entered; run the command again for a new code");
                }
            }
        }

        DeviceCode requestDeviceCode() {
            JsonNode j = postForm(settings.githubUrl() + "/login/device/code", Map.of("client_id", CLIENT_ID, "scope", SCOPE));
            if (!j.path("device_code").isTextual()) {
                throw new UserFacingException("GitHub did not start the device flow: " + Redact.shorten(Json.write(j)));
            }
            return new DeviceCode(j.path("device_code").asText(), j.path("user_code").asText(),
                j.path("verification_uri").asText(settings.githubUrl() + "/login/device"),
                j.path("expires_in").asLong(900), j.path("interval").asLong(5));
        }

        JsonNode pollDeviceCode(DeviceCode code) {
            return postForm(settings.githubUrl() + "/login/oauth/access_token",
                Map.of("client_id", CLIENT_ID, "device_code", code.deviceCode(), "grant_type", DEVICE_GRANT));
        }

        private JsonNode postForm(String url, Map<String, String> form) {
            StringBuilder body = new StringBuilder();
            new TreeMap<>(form).forEach((k, v) -> body.append(body.length() == 0 ? "" : "&")
                .append(URLEncoder.encode(k, UTF_8)).append('=').append(URLEncoder.encode(v, UTF_8)));
            Http.Call b = Http.Call.post(URI.create(url), "application/x-www-form-urlencoded", body.toString().getBytes(UTF_8))
                .timeout(Duration.ofSeconds(30))
                .header("accept", "application/json");
            Http.Reply response = http.send(settings.editor().applyTo(b));
            String text = Http.readLimited(response, 1024 * 1024);
            Optional<JsonNode> json = Json.tryParse(text);
            if (response.statusCode() >= 400 && json.map(j -> !j.has("error")).orElse(true)) {
                throw new UpstreamException(response.statusCode(), text, response);
            }
            return json.orElseThrow(() -> new UserFacingException("GitHub answered " + url + " with something that is not JSON: "
                + Redact.shorten(text)));
        }

        /** A GET on the GitHub API as the editor makes it: the GitHub token, JSON, the editor headers. */
        static Http.Call apiGet(Settings settings, String path, String githubToken) {
            Http.Call b = Http.Call.get(URI.create(settings.githubApiUrl() + path)).timeout(Duration.ofSeconds(30))
                .header("authorization", "token " + githubToken)
                .header("accept", "application/json");
            return settings.editor().applyTo(b);
        }

        /** GET {github_api}/copilot_internal/user: plan, reset date and quota snapshots. */
        JsonNode usage(GitHubToken githubToken) {
            Http.Reply response = http.send(apiGet(settings, "/copilot_internal/user", githubToken.value()));
            String text = Http.readLimited(response, 4 * 1024 * 1024);
            int status = response.statusCode();
            if (status == 401 || status == 403 || status == 404) {
                throw new UserFacingException("GitHub refused " + githubToken.describe() + " for the usage report (" + status + " at "
                    + settings.githubApiUrl() + "/copilot_internal/user): " + githubToken.fix());
            }
            if (status >= 400) throw new UpstreamException(status, text, response);
            return Json.tryParse(text).orElseThrow(() -> new UserFacingException("GitHub's usage answer is not JSON"));
        }
    }

    /**
     * The GitHub token on disk: a 0600 file, written atomically, in a directory that is 0700 when copilot-api created it
     * or it is copilot-api's own (ownsDir: the default data directory). A directory the user named (COPILOT_API_HOME,
     * which may be /tmp or a home) keeps its mode: the file's own mode protects the token.
     */
    record TokenStore(Path dir, boolean ownsDir) {
        /** A directory the user chose: never chmod-ed unless copilot-api creates it. */
        TokenStore(Path dir) {
            this(dir, false);
        }

        Path file() {
            return dir.resolve("github_token");
        }

        Optional<String> load() {
            try {
                if (!Files.isRegularFile(file())) return Optional.empty();
                tighten(file(), "rw-------");
                if (ownsDir) tighten(dir, "rwx------");
                String t = Files.readString(file(), UTF_8).trim();
                return t.isEmpty() ? Optional.empty() : Optional.of(t);
            } catch (IOException e) {
                throw new UserFacingException("cannot read the token file " + file() + ": " + describe(e));
            }
        }

        /** A token file others can read (an older tool's, a copy) is tightened before use, with a warning. */
        private static void tighten(Path p, String perms) throws IOException {
            Optional<Set<java.nio.file.attribute.PosixFilePermission>> current = Posix.permissions(p);
            Set<java.nio.file.attribute.PosixFilePermission> wanted = PosixFilePermissions.fromString(perms);
            if (current.isEmpty() || wanted.containsAll(current.get())) return;
            try {
                Posix.restrict(p, perms);
            } catch (IOException e) {
                Logs.log().warn("{} is readable by other users ({}) and cannot be tightened ({}); run chmod {} on it", p,
                    PosixFilePermissions.toString(current.get()), describe(e), perms.startsWith("rwx") ? "700" : "600");
                return;
            }
            Logs.log().warn("{} was readable by other users ({}); it now has mode {}", p,
                PosixFilePermissions.toString(current.get()), perms);
        }

        void save(String token) {
            try {
                if (!Files.isDirectory(dir)) {
                    Files.createDirectories(dir);
                    Posix.restrict(dir, "rwx------");
                } else if (ownsDir) {
                    Posix.restrict(dir, "rwx------");
                }
                Path tmp = Files.createTempFile(dir, "github_token", ".tmp");
                Posix.restrict(tmp, "rw-------");
                Files.writeString(tmp, token.trim() + "\n", UTF_8);
                Files.move(tmp, file(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                Posix.restrict(file(), "rw-------");
            } catch (IOException e) {
                throw new UserFacingException("cannot write the token file " + file() + ": " + describe(e));
            }
        }
    }

    // ==== 8. Errors ====

    /** A problem the user can act on, reported as one line. */
    static class UserFacingException extends RuntimeException {
        UserFacingException(String message) {
            super(message);
        }

        UserFacingException(String message, Throwable cause) {
            super(message, cause);
        }
    }

    /** An error to answer in the caller's API shape. */
    static final class ApiError extends RuntimeException {
        private final int status;
        private final String type;
        private final String param;
        private final String code;
        private final Map<String, String> headers = new LinkedHashMap<>();

        ApiError(int status, String type, String message) {
            this(status, type, message, null, null);
        }

        ApiError(int status, String type, String message, String param, String code) {
            super(message, null, false, false);
            this.status = status;
            this.type = type;
            this.param = param;
            this.code = code;
        }

        int status() { return status; }

        String type() { return type; }

        String param() { return param; }

        String code() { return code; }

        Map<String, String> headers() { return headers; }
    }

    /** Copilot or GitHub answered with an error status. */
    static final class UpstreamException extends RuntimeException {
        private final int status;
        private final String body;
        private final String retryAfter;

        UpstreamException(int status, String body, Http.Reply reply) {
            super("upstream answered HTTP " + status + ": " + Redact.shorten(body == null ? "" : body), null, false, false);
            this.status = status;
            this.body = body == null ? "" : body;
            this.retryAfter = reply == null ? null : reply.header("retry-after").orElse(null);
        }

        int status() { return status; }

        String body() { return body; }

        Optional<String> retryAfter() {
            return Optional.ofNullable(retryAfter);
        }
    }

    /**
     * GitHub rate-limited the Copilot token exchange (429): not a bad gateway but a rate limit, answered as a 429 in the
     * caller's shape, with the wait GitHub asked for (retry-after) when it gave one.
     */
    static final class TokenExchangeLimited extends UserFacingException {
        private final Duration retryAfter;

        TokenExchangeLimited(String message, Duration retryAfter) {
            super(message);
            this.retryAfter = retryAfter;
        }

        Optional<Duration> retryAfter() {
            return Optional.ofNullable(retryAfter);
        }

        /** A retry-after header as a wait: delta-seconds or an HTTP date (RFC 9110); anything else is no wait at all. */
        static Optional<Duration> wait(String header) {
            String v = header.strip();
            if (v.matches("\\d{1,9}")) return Optional.of(Duration.ofSeconds(Long.parseLong(v)));
            try {
                Instant at = java.time.ZonedDateTime.parse(v, java.time.format.DateTimeFormatter.RFC_1123_DATE_TIME).toInstant();
                Duration d = Duration.between(Instant.now(), at);
                return Optional.of(d.isNegative() ? Duration.ZERO : d);
            } catch (java.time.format.DateTimeParseException e) {
                return Optional.empty();
            }
        }
    }

    /**
     * Copilot's model list could not be read and none was read before: the request that needed it fails with this, in
     * its API's shape (ErrorShapes.Errors.catalogFailure says what the cause means for the status and the message).
     */
    static final class CatalogUnavailable extends UserFacingException {
        CatalogUnavailable(RuntimeException cause) {
            super("Copilot's model list could not be read: " + describe(cause), cause);
        }

        RuntimeException reason() {
            return (RuntimeException) getCause();
        }
    }

    /** The store is on but cannot be read or written: a 503 saying so, so that no client takes it for "not found". */
    static final class StoreFailing extends RuntimeException {
        StoreFailing(String message) {
            super(message, null, false, false);
        }
    }

    /** Copilot or GitHub could not be reached at all. */
    static class UpstreamUnreachable extends RuntimeException {
        UpstreamUnreachable(String message, Throwable cause) {
            super(message, cause);
        }
    }

    /** Copilot was reached but did not answer within the time allowed (504). */
    static final class UpstreamTimeout extends UpstreamUnreachable {
        UpstreamTimeout(String message, Throwable cause) {
            super(message, cause);
        }
    }

    // ==== 9. Small utilities ====

    static final class Json {
        static ObjectNode object() {
            return JsonNodeFactory.instance.objectNode();
        }

        static ArrayNode array() {
            return JsonNodeFactory.instance.arrayNode();
        }

        static String write(JsonNode node) {
            try {
                return JSON.writeValueAsString(node);
            } catch (JsonProcessingException e) {
                throw new UncheckedIOException(e);
            }
        }

        static byte[] bytes(JsonNode node) {
            try {
                return JSON.writeValueAsBytes(node);
            } catch (JsonProcessingException e) {
                throw new UncheckedIOException(e);
            }
        }

        static String pretty(JsonNode node) {
            try {
                return JSON.writerWithDefaultPrettyPrinter().writeValueAsString(node);
            } catch (JsonProcessingException e) {
                throw new UncheckedIOException(e);
            }
        }

        /**
         * The bytes of {@code edited}, an edit of {@code original} (parsed from {@code raw}): each top-level value that
         * is still the original's (the same node, or an equal one) is copied from the raw bytes as it came; only the
         * changed ones are written. A Claude Code request is mostly one large, unchanged messages array.
         */
        static byte[] splice(byte[] raw, ObjectNode original, ObjectNode edited) {
            if (raw == null) return bytes(edited);
            Map<String, long[]> spans = topLevelSpans(raw);
            if (spans == null) return bytes(edited);
            java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream(raw.length + 256);
            out.write('{');
            boolean first = true;
            for (var field : edited.properties()) {
                if (!first) out.write(',');
                first = false;
                out.writeBytes(bytes(JsonNodeFactory.instance.textNode(field.getKey())));
                out.write(':');
                JsonNode before = original.get(field.getKey());
                long[] span = spans.get(field.getKey());
                boolean same = before != null && span != null && (before == field.getValue() || before.equals(field.getValue()));
                if (same) out.write(raw, (int) span[0], (int) (span[1] - span[0]));
                else out.writeBytes(bytes(field.getValue()));
            }
            out.write('}');
            return out.toByteArray();
        }

        /** Byte ranges of the top-level object and array values of a JSON object; null when it cannot tell. */
        private static Map<String, long[]> topLevelSpans(byte[] raw) {
            Map<String, long[]> spans = new HashMap<>();
            try (com.fasterxml.jackson.core.JsonParser p = JSON.getFactory().createParser(raw)) {
                if (p.nextToken() != com.fasterxml.jackson.core.JsonToken.START_OBJECT) return null;
                while (p.nextToken() == com.fasterxml.jackson.core.JsonToken.FIELD_NAME) {
                    String name = p.currentName();
                    com.fasterxml.jackson.core.JsonToken value = p.nextToken();
                    if (value == com.fasterxml.jackson.core.JsonToken.START_OBJECT || value == com.fasterxml.jackson.core.JsonToken.START_ARRAY) {
                        long start = p.currentTokenLocation().getByteOffset();
                        p.skipChildren();
                        long end = p.currentLocation().getByteOffset();
                        if (start < 0 || end <= start) return null;
                        spans.put(name, new long[] {start, end});
                    }
                }
                return spans;
            } catch (IOException e) {
                return null;
            }
        }

        static Optional<JsonNode> tryParse(String text) {
            if (text == null || text.isBlank()) return Optional.empty();
            try {
                return Optional.ofNullable(JSON.readTree(text));
            } catch (IOException e) {
                return Optional.empty();
            }
        }

        static String shortError(IOException e) {
            String m = describe(e);
            int nl = m.indexOf('\n');
            return nl > 0 ? m.substring(0, nl) : m;
        }

        static final java.util.Set<String> IMAGE_TYPES = java.util.Set.of("image_url", "image", "input_image");

        /** True when any object anywhere below has an image type: messages, tool results, input items. */
        static boolean containsImage(JsonNode node) {
            if (node == null) return false;
            if (node.isObject()) {
                if (IMAGE_TYPES.contains(node.path("type").asText(""))) return true;
                for (JsonNode child : node) if (containsImage(child)) return true;
            } else if (node.isArray()) {
                for (JsonNode child : node) if (containsImage(child)) return true;
            }
            return false;
        }
    }

    /** One event to send a client: its name (the event: line, equal to data.type) and its data. */
    record NamedEvent(String name, ObjectNode data) implements Frame {
        @Override
        public String sse() {
            return "event: " + name + "\ndata: " + Json.write(data) + "\n\n";
        }

        @Override
        public JsonNode json() {
            return data;
        }

        @Override
        public String failure() {
            return name.equals("error") || name.equals("response.failed") ? "the stream ended with " + name : null;
        }
    }

    /** Best-effort copy to the system clipboard with whichever tool the machine has. */
    static final class Clipboard {
        static boolean copy(String text) {
            List<List<String>> candidates = new ArrayList<>();
            candidates.add(List.of("pbcopy"));
            if (System.getenv("WAYLAND_DISPLAY") != null) candidates.add(List.of("wl-copy"));
            if (System.getenv("DISPLAY") != null) {
                candidates.add(List.of("xclip", "-selection", "clipboard"));
                candidates.add(List.of("xsel", "--clipboard", "--input"));
            }
            candidates.add(List.of("clip.exe"));
            for (List<String> cmd : candidates) {
                if (onPath(cmd.get(0)) && run(cmd, text)) return true;
            }
            return false;
        }

        static boolean onPath(String exe) {
            String path = System.getenv("PATH");
            if (path == null) return false;
            for (String dir : path.split(java.io.File.pathSeparator)) {
                if (!dir.isEmpty() && Files.isExecutable(Path.of(dir, exe))) return true;
            }
            return false;
        }

        private static boolean run(List<String> cmd, String text) {
            try {
                Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
                try (OutputStream in = p.getOutputStream()) {
                    in.write(text.getBytes(UTF_8));
                }
                return p.waitFor(3, TimeUnit.SECONDS) && p.exitValue() == 0;
            } catch (IOException e) {
                return false;
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return false;
            }
        }
    }

    /** Virtual threads when the runtime has them (Java 21+), platform daemon threads otherwise. */
    static final class Threads {
        static boolean virtualThreadsAvailable() {
            return Runtime.version().feature() >= 21;
        }

        static ExecutorService executor(String name) {
            if (virtualThreadsAvailable()) {
                try {
                    return (ExecutorService) Executors.class.getMethod("newVirtualThreadPerTaskExecutor").invoke(null);
                } catch (ReflectiveOperationException e) {
                    Logs.log().debug("virtual threads unavailable: {}", describe(e));
                }
            }
            return new java.util.concurrent.ThreadPoolExecutor(0, Integer.MAX_VALUE, Server.POOL_IDLE.toMillis(), TimeUnit.MILLISECONDS,
                new java.util.concurrent.SynchronousQueue<>(), daemon(name));
        }

        static ScheduledExecutorService scheduler(String name) {
            return Executors.newSingleThreadScheduledExecutor(daemon(name));
        }

        static void start(Runnable task) {
            STREAMS.execute(task);
        }

        private static final ExecutorService STREAMS = executor("background");

        private static java.util.concurrent.ThreadFactory daemon(String name) {
            java.util.concurrent.atomic.AtomicInteger n = new java.util.concurrent.atomic.AtomicInteger();
            return r -> {
                Thread t = new Thread(r, name + "-" + n.incrementAndGet());
                t.setDaemon(true);
                return t;
            };
        }
    }

    /** The listening port: found busy before anything else happens, and said so in words. */
    static final class Ports {
        /** Binds and releases the address, so a busy port is found before the login, not after it. */
        static void requireFree(String host, int port) {
            if (port == 0) return;
            try (java.net.ServerSocket probe = new java.net.ServerSocket()) {
                probe.setReuseAddress(true);
                probe.bind(new InetSocketAddress(host, port));
            } catch (java.net.BindException e) {
                throw busy(host, port, e);
            } catch (IOException e) {
                throw new UserFacingException("cannot listen on " + host + ":" + port + ": " + describe(e));
            }
        }

        /** Starts the server; a port taken in the meantime gets the same sentence, not a library's. */
        static Server start(String host, int port, Supplier<Server> start) {
            try {
                return start.get();
            } catch (RuntimeException e) {
                for (Throwable t = e; t != null; t = t.getCause()) {
                    if (t instanceof java.net.BindException b) throw busy(host, port, b);
                }
                throw e;
            }
        }

        private static UserFacingException busy(String host, int port, IOException e) {
            String why = describe(e).toLowerCase(Locale.ROOT).contains("in use") ? "is in use" : "cannot be used (" + describe(e) + ")";
            return new UserFacingException("port " + port + " on " + host + " " + why + "; pick another with --port"
                + (port == DEFAULT_PORT ? " (is another copilot-api already running?)" : ""));
        }
    }

    /** POSIX permissions where the file system has them (not on Windows). */
    static final class Posix {
        static Optional<Set<java.nio.file.attribute.PosixFilePermission>> permissions(Path p) throws IOException {
            try {
                return Optional.of(Files.getPosixFilePermissions(p));
            } catch (UnsupportedOperationException e) {
                return Optional.empty();
            }
        }

        static void restrict(Path p, String perms) throws IOException {
            try {
                Files.setPosixFilePermissions(p, PosixFilePermissions.fromString(perms));
            } catch (UnsupportedOperationException e) {
                Logs.log().debug("no POSIX permissions on {}", p);
            }
        }
    }

    /** Keeps secrets out of logs, error messages and the history: one set of shapes for all three. */
    static final class Redact {
        private static final Pattern GITHUB_TOKEN = Pattern.compile("\\b(gh[opusr]|github_pat)_[A-Za-z0-9_]{10,}");
        private static final Pattern COPILOT_TOKEN = Pattern.compile("\\btid=[^\"\\s,]+");
        private static final Pattern BEARER = Pattern.compile("(?i)(bearer|token)\\s+[A-Za-z0-9._~+/=;:-]{12,}");
        /** Anthropic (sk-ant-), OpenAI project, service-account and admin keys, and older OpenAI keys (sk-). */
        private static final Pattern SK_KEY = Pattern.compile("\\b(sk-(?:ant-|proj-|svcacct-|admin-)?)[A-Za-z0-9_-]{16,}");
        /** AWS access key ids, Google API keys, Slack tokens. */
        private static final Pattern CLOUD_KEY = Pattern.compile("\\b(AKIA|ASIA)[0-9A-Z]{16}\\b|\\bAIza[0-9A-Za-z_-]{35}|\\b(xox[abprs]-)[A-Za-z0-9-]{10,}");
        /** A value given to a key-like name: x-api-key: v, "api_key": "v", OPENAI_API_KEY=v, client_secret=v, password=v. */
        private static final Pattern NAMED_SECRET = Pattern.compile(
            "(?i)\\b([a-z0-9_-]*(?:api[_-]?key|access[_-]?token|auth[_-]?token|secret|password))(\\\\?[\"']?\\s*[:=]\\s*\\\\?[\"']?)[^\\s\"'\\\\,;&]{8,}");

        static String secrets(String s) {
            if (s == null) return null;
            s = GITHUB_TOKEN.matcher(s).replaceAll("$1_***");
            s = COPILOT_TOKEN.matcher(s).replaceAll("tid=***");
            s = NAMED_SECRET.matcher(s).replaceAll("$1$2***");
            s = SK_KEY.matcher(s).replaceAll("$1***");
            s = CLOUD_KEY.matcher(s).replaceAll(m -> m.group(2) != null ? m.group(2) + "***" : m.group(1) != null ? m.group(1) + "***" : "AIza***");
            return BEARER.matcher(s).replaceAll("$1 ***");
        }

        static String shorten(String s) {
            String r = secrets(s == null ? "" : s);
            return r.length() > 500 ? r.substring(0, 500) + "..." : r;
        }
    }

    /** Random ids in the shapes clients expect. */
    static final class Ids {
        private static final String ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        private static final java.security.SecureRandom RANDOM = new java.security.SecureRandom();

        /** A version 4 UUID from ThreadLocalRandom: a request id needs to be unique, not unguessable, and SecureRandom locks. */
        static String uuid() {
            java.util.concurrent.ThreadLocalRandom r = java.util.concurrent.ThreadLocalRandom.current();
            long high = (r.nextLong() & ~0xF000L) | 0x4000L;
            long low = (r.nextLong() & 0x3FFFFFFFFFFFFFFFL) | 0x8000000000000000L;
            return new UUID(high, low).toString();
        }

        /**
         * The prefix and 32 hex digits of the SHA-256 of the seed and the JSON: the same id whenever they are the same.
         * For ids of what a client sent, which must not change when it sends them again.
         */
        static String derived(String prefix, String seed, JsonNode json) {
            MessageDigest sha = sha256();
            sha.update(seed.getBytes(UTF_8));
            sha.update((byte) 0);
            try (OutputStream out = new java.security.DigestOutputStream(OutputStream.nullOutputStream(), sha)) {
                JSON.writeValue(out, json);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            return prefix + HexFormat.of().formatHex(sha.digest(), 0, 16);
        }

        /** A fresh SHA-256 digest (every Java runtime has one: its absence is a broken runtime, not a case to handle). */
        static MessageDigest sha256() {
            try {
                return MessageDigest.getInstance("SHA-256");
            } catch (NoSuchAlgorithmException e) {
                throw new IllegalStateException("SHA-256 is missing from this Java runtime", e);
            }
        }

        static String random(int length) {
            StringBuilder b = new StringBuilder(length);
            for (int i = 0; i < length; i++) b.append(ALPHABET.charAt(RANDOM.nextInt(ALPHABET.length())));
            return b.toString();
        }
    }
}
