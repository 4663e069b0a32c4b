///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DESCRIPTION Measures copilot-api (in this JVM, and as a process side by side with any other proxy) against the stub, on loopback only.
//SOURCES ../copilot-api.java
//SOURCES StubUpstream.java

package copilotapi;

import static java.nio.charset.StandardCharsets.UTF_8;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.FilterInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.lang.management.MemoryMXBean;
import java.lang.management.ThreadInfo;
import java.lang.management.ThreadMXBean;
import java.lang.reflect.Method;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * A benchmark of copilot-api itself: the stub of GitHub and Copilot and copilot-api run in this JVM, the
 * client talks to copilot-api over 127.0.0.1, and every number is compared with the same request sent
 * straight to the stub, so that the difference is what copilot-api adds. Bounded in count and in time
 * (a watchdog ends the run), no traffic leaves the loopback interface.
 *
 * <p>Run from the repository root: {@code ./jbang tests/Benchmark.java} (a few minutes), or
 * {@code ./jbang tests/Benchmark.java --quick} (well under a minute, a smoke test). Prints a table, then one line
 * starting with {@code JSON: } that carries the same numbers for machines. Section 5 runs copilot-api as a separate
 * process, the way users start it, beside any other proxy given by base URL ({@code --compare URL}), and reports
 * req/s under load, time added per streamed chunk, RSS, threads and start-up with the ratio copilot-api / other.
 * Options: {@link #USAGE} ({@code --help}).
 */
class Benchmark {

    static final String USAGE = """
        Usage: ./jbang tests/Benchmark.java [--quick] [--time-limit SECONDS] [--in-process | --side-by-side]
                 [--target copilot-api|URL [--target-pid PID]] [--stub-port N] [--warm-up SECONDS] [--rounds N]
                 [--compare URL [--compare-pid PID] [--compare-name NAME] [--compare-wait SECONDS] [--compare-start 'CMD']]
        Everything on 127.0.0.1; numbers are reported, never asserted.
          (default)         sections 1-4 (copilot-api and the stub in this JVM, via vs direct), then section 5
          --in-process      sections 1-4 only
          --side-by-side    section 5 only: copilot-api as a separate process (./jbang copilot-api.java start, pointed at
                            this JVM's stub by COPILOT_API_* variables) beside --compare, with PASS/FAIL against the targets
          --quick           small counts and short load windows, a smoke test well under a minute
          --time-limit      stop (exit 3, printing what was measured) after this long; default 720, quick 120, plus 80
                            for each round past the first
          --target          copilot-api (default: started as a process) or the base URL of an already running one
          --target-pid      its pid, for /proc/PID/status (default: the process listening on the URL's port)
          --warm-up         seconds of load before each side-by-side row is measured (default 10, quick 0.5)
          --rounds          measure each side-by-side load row N times, alternating which proxy goes first (ABBA); the
                            row shows the median of each proxy's rounds and a note gives every round's ratio (default 1)
          --stub-port       port of the side-by-side stub (default: a free one; its env lines go to stderr at start)
          --compare         base URL of another proxy pointed at that stub (implies --side-by-side); the benchmark waits
                            --compare-wait seconds (default 120) for its /v1/models to answer 200, so it can be started
                            after this benchmark printed the stub's address
          --compare-pid     its pid (default: the process listening on the URL's port)
          --compare-name    its column's name (default: other)
          --compare-start   a shell command that starts another instance of it, for the start-up row; {port}, {stub}
                            and {token} are replaced, STUB_URL and the COPILOT_API_* variables are in its environment
        Example, against another proxy that reads the stub's base URL from STUB_URL:
          ./jbang tests/Benchmark.java --stub-port 18080 --compare http://127.0.0.1:4141 --compare-name other &
          STUB_URL=http://127.0.0.1:18080 other-proxy start --port 4141 --github-token ghu_stubGithubToken0123456789
        """;

    static final ObjectMapper JSON = new ObjectMapper();
    static final Duration REQUEST_TIMEOUT = Duration.ofSeconds(60);
    static final Map<String, String> ANTHROPIC = Map.of("anthropic-version", "2023-06-01");

    /** Sizes of one run; {@link #quick()} for the smoke test, {@link #full()} by default. */
    record Config(String name, int warmup, int chatN, int largeN, int largeKb, int allocN, int streamChunks, int streamWarmup,
                  int streamRuns, int shortStreams, int[] concurrency, int concurrentChunks, long concurrentDelayMs, Duration timeLimit) {
        static Config full() {
            return new Config("full", 1000, 2000, 200, 256, 500, 5000, 6, 5, 500, new int[] {50, 200}, 200, 5, Duration.ofMinutes(12));
        }

        static Config quick() {
            return new Config("quick", 100, 200, 20, 256, 100, 1000, 1, 1, 50, new int[] {10, 50}, 50, 5, Duration.ofMinutes(2));
        }
    }

    public static void main(String... args) throws Exception {
        // Before anything logs: one line per request would distort the numbers.
        CopilotApi.Logs.configure(false);
        System.setProperty("org.slf4j.simpleLogger.log.copilot-api", "warn");
        // The stub's com.sun.net.httpserver leaves Nagle on by default: a reply written as headers then body then
        // waits for the client's delayed ACK (~40 ms on Linux). Real Copilot has no such stall, so measure without it.
        System.setProperty("sun.net.httpserver.nodelay", "true");
        Config cfg = Config.full();
        SxsConfig sxsCfg = SxsConfig.full();
        SxsOptions sxs = new SxsOptions();
        boolean inProcess = true;
        boolean sideBySide = true;
        Duration limit = null;
        Duration sxsWarm = null;
        int rounds = 1;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "--quick" -> {
                    cfg = Config.quick();
                    sxsCfg = SxsConfig.quick();
                }
                case "--time-limit" -> limit = Duration.ofSeconds(number(args, i++));
                case "--side-by-side" -> inProcess = false;
                case "--in-process" -> sideBySide = false;
                case "--target" -> sxs.target = value(args, i++);
                case "--target-pid" -> sxs.targetPid = number(args, i++);
                case "--compare" -> {
                    sxs.compare = value(args, i++);
                    inProcess = false;
                }
                case "--compare-pid" -> sxs.comparePid = number(args, i++);
                case "--compare-name" -> sxs.compareName = value(args, i++);
                case "--compare-start" -> sxs.compareStart = value(args, i++);
                case "--compare-wait" -> sxs.compareWaitSeconds = (int) number(args, i++);
                case "--stub-port" -> sxs.stubPort = (int) number(args, i++);
                case "--warm-up" -> sxsWarm = Duration.ofSeconds(number(args, i++));
                case "--rounds" -> rounds = (int) Math.max(1, number(args, i++));
                case "-h", "--help" -> {
                    System.out.print(USAGE);
                    return;
                }
                default -> {
                    System.err.println("unknown argument: " + a + " (try --help)");
                    System.exit(2);
                }
            }
        }
        if (!sideBySide && !inProcess) inProcess = true;
        if (sxsWarm != null || rounds > 1) {
            SxsConfig c = sxsCfg;
            sxsCfg = new SxsConfig(c.name(), sxsWarm == null ? c.warm() : sxsWarm, c.measure(), c.chunkRuns(), c.chunks(), c.openStreams(),
                c.settle(), c.startRuns(), rounds);
        }
        // each further round of the four load rows adds two measured windows (and a short warm-up) per row
        if (limit == null) limit = cfg.timeLimit().plus(sxsCfg.measure().plusSeconds(2).multipliedBy(8L * (rounds - 1)));
        Duration timeLimit = limit;
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(timeLimit.toMillis());
                System.err.println("benchmark: time limit of " + timeLimit.toSeconds() + "s reached, stopping; results so far:");
                Bench running = Bench.current;
                if (running != null) System.out.println(running.table);
                if (SideBySide.table != null) System.out.println(SideBySide.table);
                System.out.flush();
                Runtime.getRuntime().halt(3);
            } catch (InterruptedException ignored) {
                // Finished in time.
            }
        }, "bench-watchdog");
        watchdog.setDaemon(true);
        watchdog.start();
        int code = 0;
        ObjectNode sxsJson = JSON.createObjectNode();
        // The side-by-side stub first, so that another proxy can be pointed at it while the rest runs.
        SideBySide side = sideBySide ? new SideBySide(sxsCfg, sxs, sxsJson) : null;
        try {
            if (inProcess) {
                try (Bench bench = new Bench(cfg)) {
                    code = bench.run();
                }
            }
            if (side != null && code == 0) {
                code = side.run();
                System.out.println(side.out);
                System.out.println("JSON: " + JSON.writeValueAsString(sxsJson));
            }
        } finally {
            if (side != null) side.close();
        }
        watchdog.interrupt();
        System.exit(code);
    }

    static String value(String[] args, int i) {
        if (i + 1 >= args.length) {
            System.err.println(args[i] + " needs a value (try --help)");
            System.exit(2);
        }
        return args[i + 1];
    }

    static long number(String[] args, int i) {
        String v = value(args, i);
        if (!v.matches("\\d+")) {
            System.err.println(args[i] + " needs a number, not " + v);
            System.exit(2);
        }
        return Long.parseLong(v);
    }

    // ==== The rig: stub and copilot-api in this JVM, on free loopback ports ====

    static final class Rig implements AutoCloseable {
        final StubUpstream stub;
        final Path home;
        final CopilotApi.Settings settings;
        final CopilotApi.CopilotTokens tokens;
        final CopilotApi.Serving.Server server;

        /** Only the stub's URLs and a private home: nothing from the caller's environment reaches copilot-api. */
        static CopilotApi.Settings stubSettings(StubUpstream stub, Path home) {
            Map<String, String> env = new HashMap<>(stub.env());
            env.put("COPILOT_API_HOME", home.toString());
            CopilotApi.CommonOptions options = new CopilotApi.CommonOptions();
            options.accountType = CopilotApi.AccountType.individual;
            options.githubToken = StubUpstream.VALID_GITHUB_TOKEN;
            return CopilotApi.Settings.from(options, env);
        }

        Rig() throws IOException, InterruptedException {
            stub = StubUpstream.start();
            home = Files.createTempDirectory("copilot-api-bench");
            settings = stubSettings(stub, home);
            CopilotApi.Serving.App app = CopilotApi.Serving.App.open(settings, CopilotApi.Timeouts.DEFAULT, auth -> auth.existingToken().orElseThrow());
            tokens = app.tokens();
            app.models().refreshQuietly();
            server = app.serve(new CopilotApi.ServerOptions("127.0.0.1", 0));
        }

        String url(String path) {
            return "http://127.0.0.1:" + server.port() + path;
        }

        @Override
        public void close() {
            server.stop();
            tokens.close();
            stub.close();
            try (Stream<Path> files = Files.walk(home)) {
                files.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            } catch (IOException ignored) {
                // A temporary directory left behind is harmless.
            }
        }
    }

    // ==== Measurements ====

    /** Latencies of one path, in nanoseconds, plus the errors seen. */
    record Latencies(long[] nanos, int errors, String firstError) {
        double pct(double p) {
            if (nanos.length == 0) return Double.NaN;
            long[] s = nanos.clone();
            Arrays.sort(s);
            int i = (int) Math.ceil(p / 100.0 * s.length) - 1;
            return s[Math.max(0, Math.min(s.length - 1, i))] / 1e6;
        }

        double mean() {
            return Arrays.stream(nanos).average().orElse(Double.NaN) / 1e6;
        }

        double max() {
            return Arrays.stream(nanos).max().orElse(0) / 1e6;
        }
    }

    /** One streamed answer as the client saw it. */
    record StreamResult(int status, long ttfcNanos, long totalNanos, int events, long bytes, boolean complete, String error) {
        boolean ok() {
            return status == 200 && complete && error == null;
        }

        static StreamResult failed(String why) {
            return new StreamResult(-1, -1, -1, 0, 0, false, why);
        }
    }

    /** Median figures over several runs of one stream. */
    record StreamStats(int runs, double ttfcMs, double totalMs, int events, long bytes, int failures, String firstError) {
        double eventsPerSecond() {
            return events / (totalMs / 1000.0);
        }

        double mbPerSecond() {
            return bytes / 1e6 / (totalMs / 1000.0);
        }

        static StreamStats of(List<StreamResult> results) {
            List<StreamResult> good = results.stream().filter(StreamResult::ok).toList();
            String err = results.stream().filter(r -> !r.ok()).map(r -> r.error() != null ? r.error() : "status " + r.status()
                + (r.complete() ? "" : ", incomplete")).findFirst().orElse(null);
            if (good.isEmpty()) return new StreamStats(0, Double.NaN, Double.NaN, 0, 0, results.size(), err);
            return new StreamStats(good.size(), median(good.stream().mapToLong(StreamResult::ttfcNanos).toArray()) / 1e6,
                median(good.stream().mapToLong(StreamResult::totalNanos).toArray()) / 1e6,
                good.get(0).events(), good.get(0).bytes(), results.size() - good.size(), err);
        }
    }

    /** What one round of K concurrent streams did to time, errors, heap and threads. */
    record ConcurrencyResult(int clients, int chunks, long delayMs, double wallMs, double idealMs, int errors, String firstError,
                             double ttfcP50, double ttfcP99, double durP50, double durMax, long heapBefore, long heapAfter,
                             long heapPeakSampled, int threadsBefore, int peakThreads, int peakOwnThreads, int ownThreadsIdle,
                             int threadsAfter, String poolsAtPeak, long listenOverflows) {}

    static final class Bench implements AutoCloseable {
        /** The running benchmark, for the watchdog to print what was measured before the time limit. */
        static volatile Bench current;

        final Config cfg;
        final Rig rig;
        final HttpClient client;
        final ExecutorService clientPool;
        final String copilotBase;
        final String copilotToken;
        final StringBuffer table = new StringBuffer();
        final ObjectNode summary = JSON.createObjectNode();
        final MemoryMXBean memory = ManagementFactory.getMemoryMXBean();
        final ThreadMXBean threads = ManagementFactory.getThreadMXBean();

        Bench(Config cfg) throws Exception {
            this.cfg = cfg;
            AtomicInteger n = new AtomicInteger();
            clientPool = Executors.newCachedThreadPool(r -> {
                Thread t = new Thread(r, "bench-http-" + n.incrementAndGet());
                t.setDaemon(true);
                return t;
            });
            client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).connectTimeout(Duration.ofSeconds(10))
                .executor(clientPool).build();
            progress("starting the stub and copilot-api");
            rig = new Rig();
            // The token and the Copilot base URL, as copilot-api itself uses them (its /token route).
            HttpResponse<String> t = client.send(HttpRequest.newBuilder(URI.create(rig.url("/token"))).timeout(REQUEST_TIMEOUT).GET().build(),
                HttpResponse.BodyHandlers.ofString());
            if (t.statusCode() != 200) throw new IllegalStateException("GET /token answered " + t.statusCode() + ": " + t.body());
            JsonNode token = JSON.readTree(t.body());
            copilotToken = token.path("token").asText();
            copilotBase = token.path("api").asText(rig.stub.copilotUrl());
            String host = URI.create(copilotBase).getHost();
            if (!"127.0.0.1".equals(host)) throw new IllegalStateException("refusing to benchmark against a non-loopback upstream: " + copilotBase);
            current = this;
        }

        int run() throws Exception {
            boolean vthreads = CopilotApi.Threads.virtualThreadsAvailable();
            Runtime rt = Runtime.getRuntime();
            String gcs = ManagementFactory.getGarbageCollectorMXBeans().stream().map(GarbageCollectorMXBean::getName)
                .collect(Collectors.joining(", "));
            line("copilot-api %s benchmark (%s run): Java %s (%s), %d CPUs, max heap %d MB, GC %s", CopilotApi.VERSION, cfg.name(),
                Runtime.version(), System.getProperty("java.vm.name"), rt.availableProcessors(), rt.maxMemory() >> 20, gcs);
            double load = ManagementFactory.getOperatingSystemMXBean().getSystemLoadAverage();
            line("virtual threads in copilot-api: %s. Client, copilot-api and stub share this JVM; all traffic on 127.0.0.1.",
                vthreads ? "yes" : "no (platform threads)");
            line("System load average at start: %.2f (other processes on these CPUs make every number noisier).", load);
            line("\"via\" = client -> copilot-api -> stub; \"direct\" = the same request from the client straight to the stub.");
            summary.put("copilot_api_version", CopilotApi.VERSION);
            summary.put("run", cfg.name());
            summary.put("java", Runtime.version().toString());
            summary.put("cpus", rt.availableProcessors());
            summary.put("virtual_threads", vthreads);
            summary.put("load_average_at_start", round(load));

            long heapStart = heapAfterGc();
            chatLatency();
            streaming();
            anthropic();
            concurrency();
            long heapEnd = heapAfterGc();
            line("");
            line("Heap used after GC (whole JVM, stub recordings cleared): at start %.1f MB, at end %.1f MB (%+.1f MB).",
                heapStart / 1e6, heapEnd / 1e6, (heapEnd - heapStart) / 1e6);
            summary.put("heap_start_mb", round(heapStart / 1e6));
            summary.put("heap_end_mb", round(heapEnd / 1e6));
            System.out.println(table);
            System.out.println("JSON: " + JSON.writeValueAsString(summary));
            return 0;
        }

        // ---- 1. Non-streaming latency ----

        void chatLatency() throws Exception {
            String small = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            String large = largeChatBody(cfg.largeKb() * 1024);
            progress("non-streaming: warming up (" + cfg.warmup() + " requests each way)");
            latency(small, cfg.warmup());
            progress("non-streaming: " + cfg.chatN() + " small requests each way");
            Latencies[] s = latency(small, cfg.chatN());
            double[] sAlloc = {allocPerRequest(() -> viaChat(small), cfg.allocN()), allocPerRequest(() -> directChat(small), cfg.allocN())};
            progress("non-streaming: " + cfg.largeN() + " requests of " + cfg.largeKb() + " KB each way");
            latency(large, Math.max(5, cfg.largeN() / 10));
            Latencies[] l = latency(large, cfg.largeN());
            int allocLarge = Math.max(10, cfg.allocN() / 10);
            double[] lAlloc = {allocPerRequest(() -> viaChat(large), allocLarge), allocPerRequest(() -> directChat(large), allocLarge)};
            String msg = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":1024,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            Call viaMsg = () -> check(client.send(viaRequest("/v1/messages", msg, ANTHROPIC), HttpResponse.BodyHandlers.ofByteArray()));
            Call directMsg = () -> check(client.send(direct("/v1/messages", msg, false).header("anthropic-version", "2023-06-01").build(),
                HttpResponse.BodyHandlers.ofByteArray()));
            progress("non-streaming: " + cfg.chatN() / 2 + " small /v1/messages requests each way");
            latency(viaMsg, directMsg, cfg.warmup() / 2);
            Latencies[] m = latency(viaMsg, directMsg, cfg.chatN() / 2);
            double[] mAlloc = {allocPerRequest(viaMsg, cfg.allocN()), allocPerRequest(directMsg, cfg.allocN())};

            line("");
            line("1. Non-streaming POST /v1/chat/completions, gpt-4.1, sequential, interleaved via/direct (after %d warm-up)", cfg.warmup());
            line("%-34s %6s %8s %8s %8s %8s %8s %8s %11s", "path", "n", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms", "errors", "alloc/req");
            ArrayNode rows = summary.putArray("chat_nonstream");
            latencyRows(rows, "small (" + small.length() + " B)", s, sAlloc);
            latencyRows(rows, "large (" + (large.length() / 1024) + " KB)", l, lAlloc);
            line("Non-streaming POST /v1/messages, claude-sonnet-4.5 (native), small (after %d warm-up)", cfg.warmup() / 2);
            latencyRows(rows, "messages (" + msg.length() + " B)", m, mAlloc);
            line("   alloc/req: bytes allocated by all threads per request (client + copilot-api + stub); the difference is copilot-api's.");
        }

        void latencyRows(ArrayNode rows, String label, Latencies[] r, double[] alloc) {
            String[] names = {"via copilot-api, " + label, "direct to stub, " + label};
            for (int i = 0; i < 2; i++) {
                Latencies x = r[i];
                line("%-34s %6d %8.3f %8.3f %8.3f %8.3f %8.2f %8d %11s", names[i], x.nanos().length, x.pct(50), x.pct(95), x.pct(99), x.mean(),
                    x.max(), x.errors(), kb(alloc[i]));
                if (x.firstError() != null) line("   first error: %s", x.firstError());
            }
            line("%-34s %6s %+8.3f %+8.3f %+8.3f %+8.3f %8s %8s %11s", "  copilot-api overhead", "", r[0].pct(50) - r[1].pct(50),
                r[0].pct(95) - r[1].pct(95), r[0].pct(99) - r[1].pct(99), r[0].mean() - r[1].mean(), "", "",
                alloc[0] < 0 || alloc[1] < 0 ? "n/a" : "+" + kb(alloc[0] - alloc[1]));
            ObjectNode o = rows.addObject();
            o.put("request", label);
            o.put("n", r[0].nanos().length);
            for (int i = 0; i < 2; i++) {
                ObjectNode p = o.putObject(i == 0 ? "via" : "direct");
                p.put("p50_ms", round(r[i].pct(50)));
                p.put("p95_ms", round(r[i].pct(95)));
                p.put("p99_ms", round(r[i].pct(99)));
                p.put("mean_ms", round(r[i].mean()));
                p.put("max_ms", round(r[i].max()));
                p.put("errors", r[i].errors());
                p.put("alloc_bytes_per_req", Math.round(alloc[i]));
            }
            o.put("overhead_p50_ms", round(r[0].pct(50) - r[1].pct(50)));
            o.put("overhead_p99_ms", round(r[0].pct(99) - r[1].pct(99)));
            o.put("overhead_alloc_bytes_per_req", Math.round(alloc[0] - alloc[1]));
        }

        /** n requests via copilot-api and n direct, alternating which goes first; [0] via, [1] direct. */
        Latencies[] latency(String body, int n) {
            return latency(() -> viaChat(body), () -> directChat(body), n);
        }

        Latencies[] latency(Call via, Call direct, int n) {
            long[][] t = new long[2][n];
            int[] errors = new int[2];
            String[] first = new String[2];
            for (int i = 0; i < n; i++) {
                for (int k = 0; k < 2; k++) {
                    int which = (i + k) % 2;
                    long t0 = System.nanoTime();
                    String err;
                    try {
                        err = which == 0 ? via.run() : direct.run();
                    } catch (Exception e) {
                        err = e.toString();
                    }
                    t[which][i] = System.nanoTime() - t0;
                    if (err != null) {
                        errors[which]++;
                        if (first[which] == null) first[which] = err;
                    }
                }
                if (i % 250 == 249) rig.stub.clear();
            }
            rig.stub.clear();
            return new Latencies[] {new Latencies(t[0], errors[0], first[0]), new Latencies(t[1], errors[1], first[1])};
        }

        /** Null when the answer is a 200 chat completion, else what went wrong. */
        String viaChat(String body) throws Exception {
            HttpRequest req = HttpRequest.newBuilder(URI.create(rig.url("/v1/chat/completions"))).timeout(REQUEST_TIMEOUT)
                .header("content-type", "application/json").POST(HttpRequest.BodyPublishers.ofString(body)).build();
            return check(client.send(req, HttpResponse.BodyHandlers.ofByteArray()));
        }

        String directChat(String body) throws Exception {
            return check(client.send(direct("/chat/completions", body, false).build(), HttpResponse.BodyHandlers.ofByteArray()));
        }

        static String check(HttpResponse<byte[]> r) {
            if (r.statusCode() == 200 && r.body().length > 0) return null;
            return "status " + r.statusCode() + ": " + shorten(new String(r.body(), UTF_8));
        }

        /** A request to the stub's Copilot API with the headers copilot-api sends (token from copilot-api's /token). */
        HttpRequest.Builder direct(String path, String body, boolean stream) {
            HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(copilotBase + path)).timeout(REQUEST_TIMEOUT)
                .header("authorization", "Bearer " + copilotToken)
                .header("copilot-integration-id", CopilotApi.EditorHeaders.INTEGRATION_ID)
                .header("openai-intent", rig.settings.editor().intent())
                .header("x-request-id", UUID.randomUUID().toString())
                .header("x-initiator", "user")
                .header("accept", stream ? "text/event-stream" : "application/json")
                .header("content-type", "application/json");
            rig.settings.editor().headers().forEach(b::header);
            return b.POST(HttpRequest.BodyPublishers.ofString(body));
        }

        interface Call {
            String run() throws Exception;
        }

        /** Bytes allocated by all threads per call, over n sequential calls; -1 when the JVM cannot tell. */
        double allocPerRequest(Call call, int n) throws Exception {
            call.run();
            long before = allocatedBytes();
            for (int i = 0; i < n; i++) call.run();
            long after = allocatedBytes();
            rig.stub.clear();
            return before < 0 || after < 0 ? -1 : (after - before) / (double) n;
        }

        // ---- 2. Streaming chat completions ----

        void streaming() throws Exception {
            int n = cfg.streamChunks();
            StubUpstream.Reply reply = StubUpstream.Reply.sse(chatChunks(n, "gpt-4.1"));
            String body = "{\"model\":\"gpt-4.1\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Write a long story\"}]}";
            progress("streaming /v1/chat/completions: " + n + " chunks, " + cfg.streamRuns() + " run(s) each way");
            StreamStats[] s = streamPair("/chat/completions", reply, () -> viaRequest("/v1/chat/completions", body, Map.of()),
                () -> direct("/chat/completions", body, true).build(), "[DONE]");
            String shortBody = "{\"model\":\"gpt-4.1\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            progress("streaming /v1/chat/completions: " + cfg.shortStreams() + " short streams each way");
            shortStreams(shortBody, Math.max(10, cfg.shortStreams() / 5));
            Latencies[][] t = shortStreams(shortBody, cfg.shortStreams());
            line("");
            line("2. Streaming POST /v1/chat/completions, gpt-4.1, %d chunks sent without delay (median of %d run(s), after %d warm-up)",
                n, cfg.streamRuns(), cfg.streamWarmup());
            streamHeader();
            ArrayNode rows = summary.putArray("chat_stream");
            streamRow(rows, "via copilot-api", s[0]);
            streamRow(rows, "direct to stub", s[1]);
            ratioLine(s);
            line("Short streams (the stub's default answer, %d events), sequential, interleaved via/direct", t[2][0].nanos().length);
            line("%-32s %6s %10s %10s %10s %10s %10s %7s", "path", "n", "TTFC p50", "TTFC p95", "TTFC p99", "total p50", "total p99", "errors");
            ArrayNode shorts = summary.putArray("chat_short_stream");
            for (int i = 0; i < 2; i++) {
                Latencies ttfc = t[0][i];
                Latencies total = t[1][i];
                line("%-32s %6d %10.3f %10.3f %10.3f %10.3f %10.3f %7d", i == 0 ? "via copilot-api" : "direct to stub", total.nanos().length,
                    ttfc.pct(50), ttfc.pct(95), ttfc.pct(99), total.pct(50), total.pct(99), total.errors());
                if (total.firstError() != null) line("   first error: %s", total.firstError());
                ObjectNode o = shorts.addObject();
                o.put("path", i == 0 ? "via" : "direct");
                o.put("n", total.nanos().length);
                o.put("ttfc_p50_ms", round(ttfc.pct(50)));
                o.put("ttfc_p95_ms", round(ttfc.pct(95)));
                o.put("ttfc_p99_ms", round(ttfc.pct(99)));
                o.put("total_p50_ms", round(total.pct(50)));
                o.put("total_p99_ms", round(total.pct(99)));
                o.put("errors", total.errors());
            }
            line("   (ms; TTFC = time from sending the request to the first data line)");
        }

        /**
         * n short streams via copilot-api and n direct, alternating which goes first: [0] time to first chunk and
         * [1] total time, each [0] via and [1] direct; [2][0] holds the event count of one via stream.
         */
        Latencies[][] shortStreams(String body, int n) {
            long[][] ttfc = new long[2][];
            long[][] total = new long[2][];
            List<List<Long>> tt = List.of(new ArrayList<>(), new ArrayList<>());
            List<List<Long>> to = List.of(new ArrayList<>(), new ArrayList<>());
            int[] errors = new int[2];
            String[] first = new String[2];
            int events = 0;
            for (int i = 0; i < n; i++) {
                for (int k = 0; k < 2; k++) {
                    int which = (i + k) % 2;
                    StreamResult r = stream(which == 0 ? viaRequest("/v1/chat/completions", body, Map.of())
                        : direct("/chat/completions", body, true).build(), "[DONE]");
                    if (!r.ok()) {
                        errors[which]++;
                        if (first[which] == null) first[which] = r.error() != null ? r.error() : "status " + r.status();
                        continue;
                    }
                    if (which == 0) events = r.events();
                    tt.get(which).add(r.ttfcNanos());
                    to.get(which).add(r.totalNanos());
                }
                if (i % 250 == 249) rig.stub.clear();
            }
            rig.stub.clear();
            for (int w = 0; w < 2; w++) {
                ttfc[w] = tt.get(w).stream().mapToLong(Long::longValue).toArray();
                total[w] = to.get(w).stream().mapToLong(Long::longValue).toArray();
            }
            return new Latencies[][] {
                {new Latencies(ttfc[0], errors[0], first[0]), new Latencies(ttfc[1], errors[1], first[1])},
                {new Latencies(total[0], errors[0], first[0]), new Latencies(total[1], errors[1], first[1])},
                {new Latencies(new long[events], 0, null)}};
        }

        void anthropic() throws Exception {
            int n = cfg.streamChunks();
            StubUpstream.Reply reply = StubUpstream.Reply.events(anthropicEvents(n, "claude-sonnet-4.5"));
            String body = "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":4096,\"stream\":true,"
                + "\"messages\":[{\"role\":\"user\",\"content\":\"Write a long story\"}]}";
            Map<String, String> headers = ANTHROPIC;
            progress("streaming /v1/messages (claude-sonnet-4.5, native): " + n + " deltas");
            StreamStats[] s = streamPair("/v1/messages", reply, () -> viaRequest("/v1/messages", body, headers),
                () -> direct("/v1/messages", body, true).header("anthropic-version", "2023-06-01").build(), "message_stop");
            line("");
            line("3. Streaming POST /v1/messages, %d text deltas (median of %d run(s))", n, cfg.streamRuns());
            streamHeader();
            ArrayNode rows = summary.putArray("messages_stream");
            streamRow(rows, "claude-sonnet-4.5 via (native)", s[0]);
            streamRow(rows, "direct to stub /v1/messages", s[1]);
            ratioLine(s);

            // gpt-4.1 on /v1/messages needs the chat-completions translator, which may not be there yet.
            progress("streaming /v1/messages (gpt-4.1, translated): probing");
            String probe = "{\"model\":\"gpt-4.1\",\"max_tokens\":64,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            HttpResponse<String> p = client.send(viaRequest("/v1/messages", probe, headers), HttpResponse.BodyHandlers.ofString());
            ObjectNode o = summary.putObject("messages_stream_translated");
            if (p.statusCode() != 200) {
                line("%-32s n/a (non-streaming probe answered %d: %s)", "gpt-4.1 via (translated)", p.statusCode(), shorten(p.body()));
                o.put("available", false);
                o.put("probe_status", p.statusCode());
                drainQueues();
                return;
            }
            String tbody = body.replace("claude-sonnet-4.5", "gpt-4.1");
            StubUpstream.Reply chat = StubUpstream.Reply.sse(chatChunks(n, "gpt-4.1"));
            List<StreamResult> runs = new ArrayList<>();
            for (int i = 0; i < 1 + cfg.streamRuns(); i++) {
                rig.stub.enqueue("/chat/completions", chat);
                StreamResult r = stream(viaRequest("/v1/messages", tbody, headers), "message_stop");
                if (i > 0 || !r.ok()) runs.add(r);
                drainQueues();
                if (!r.ok()) break;
            }
            StreamStats t = StreamStats.of(runs);
            if (t.runs() == 0) {
                line("%-32s n/a (%s)", "gpt-4.1 via (translated)", t.firstError());
                o.put("available", false);
                o.put("error", t.firstError());
            } else {
                o.put("available", true);
                streamRow(null, "gpt-4.1 via (translated)", t);
                fillStream(o, t);
            }
        }

        StreamStats[] streamPair(String stubPath, StubUpstream.Reply reply, RequestMaker via, RequestMaker directReq, String endMarker)
                throws Exception {
            drainQueues();
            List<StreamResult> v = new ArrayList<>();
            List<StreamResult> d = new ArrayList<>();
            int warm = cfg.streamWarmup();
            for (int i = 0; i < warm + cfg.streamRuns(); i++) {
                for (int k = 0; k < 2; k++) {
                    boolean isVia = (i + k) % 2 == 0;
                    rig.stub.enqueue(stubPath, reply);
                    StreamResult r = stream(isVia ? via.make() : directReq.make(), endMarker);
                    drainQueues();
                    if (i >= warm) (isVia ? v : d).add(r);
                }
                rig.stub.clear();
            }
            return new StreamStats[] {StreamStats.of(v), StreamStats.of(d)};
        }

        interface RequestMaker {
            HttpRequest make();
        }

        HttpRequest viaRequest(String path, String body, Map<String, String> headers) {
            HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(rig.url(path))).timeout(REQUEST_TIMEOUT)
                .header("content-type", "application/json");
            headers.forEach(b::header);
            return b.POST(HttpRequest.BodyPublishers.ofString(body)).build();
        }

        void streamHeader() {
            line("%-32s %8s %10s %10s %8s %8s %10s %8s", "path", "TTFC ms", "total ms", "events/s", "MB/s", "events", "bytes", "failed");
        }

        void streamRow(ArrayNode rows, String label, StreamStats s) {
            if (s.runs() == 0) {
                line("%-32s failed: %s", label, s.firstError());
            } else {
                line("%-32s %8.2f %10.1f %10.0f %8.2f %8d %10d %8d", label, s.ttfcMs(), s.totalMs(), s.eventsPerSecond(), s.mbPerSecond(),
                    s.events(), s.bytes(), s.failures());
                if (s.failures() > 0) line("   first failure: %s", s.firstError());
            }
            if (rows != null) {
                ObjectNode o = rows.addObject();
                o.put("path", label);
                fillStream(o, s);
            }
        }

        static void fillStream(ObjectNode o, StreamStats s) {
            o.put("runs_ok", s.runs());
            o.put("failures", s.failures());
            if (s.runs() == 0) {
                o.put("error", s.firstError());
                return;
            }
            o.put("ttfc_ms", round(s.ttfcMs()));
            o.put("total_ms", round(s.totalMs()));
            o.put("events_per_s", Math.round(s.eventsPerSecond()));
            o.put("mb_per_s", round(s.mbPerSecond()));
            o.put("events", s.events());
            o.put("bytes", s.bytes());
        }

        void ratioLine(StreamStats[] s) {
            if (s[0].runs() > 0 && s[1].runs() > 0) {
                line("   copilot-api: %.2fx the direct stream time, %+.2f ms to first chunk, %.1f us per event added",
                    s[0].totalMs() / s[1].totalMs(), s[0].ttfcMs() - s[1].ttfcMs(),
                    (s[0].totalMs() - s[1].totalMs()) * 1000.0 / Math.max(1, s[0].events()));
            }
        }

        /** Sends one streaming request and reads it to the end, counting data events and bytes. */
        StreamResult stream(HttpRequest req, String endMarker) {
            long t0 = System.nanoTime();
            try {
                HttpResponse<InputStream> r = client.send(req, HttpResponse.BodyHandlers.ofInputStream());
                try (CountingStream in = new CountingStream(r.body());
                     BufferedReader reader = new BufferedReader(new InputStreamReader(in, UTF_8))) {
                    if (r.statusCode() != 200) {
                        String text = reader.lines().collect(Collectors.joining("\n"));
                        return new StreamResult(r.statusCode(), -1, System.nanoTime() - t0, 0, in.count, false,
                            "status " + r.statusCode() + ": " + shorten(text));
                    }
                    long first = -1;
                    int events = 0;
                    boolean complete = false;
                    String error = null;
                    for (String line = reader.readLine(); line != null; line = reader.readLine()) {
                        if (line.startsWith("data:")) {
                            if (first < 0) first = System.nanoTime() - t0;
                            if (line.contains("[DONE]")) {
                                complete |= endMarker.equals("[DONE]");
                                continue;
                            }
                            events++;
                            if (error == null && (line.startsWith("data: {\"error\"") || line.contains("\"type\":\"error\""))) {
                                error = "error event: " + shorten(line);
                            }
                        } else if (line.startsWith("event:") && line.contains(endMarker)) {
                            complete = true;
                        }
                    }
                    return new StreamResult(200, first, System.nanoTime() - t0, events, in.count, complete, error);
                }
            } catch (Exception e) {
                return StreamResult.failed(e.toString());
            }
        }

        // ---- 4. Concurrency ----

        void concurrency() throws Exception {
            line("");
            line("4. Concurrent streaming clients on /v1/chat/completions, each %d chunks %d ms apart (ideal wall ~%.2f s)",
                cfg.concurrentChunks(), cfg.concurrentDelayMs(), (cfg.concurrentChunks() - 1) * cfg.concurrentDelayMs() / 1000.0);
            line("%-14s %7s %7s %16s %14s %18s %20s", "clients", "wall s", "errors", "TTFC p50/p99 ms", "dur p50/max s",
                "heap MB bef->aft", "threads peak (own)");
            ArrayNode rows = summary.putArray("concurrency");
            List<String> pools = new ArrayList<>();
            for (int k : cfg.concurrency()) {
                for (boolean via : new boolean[] {true, false}) {
                    progress("concurrency: " + k + " clients " + (via ? "via copilot-api" : "direct to stub"));
                    ConcurrencyResult c = concurrentRound(k, via);
                    line("%-14s %7.2f %7d %16s %14s %18s %20s", k + (via ? " via" : " direct"), c.wallMs() / 1000, c.errors(),
                        String.format(Locale.ROOT, "%.1f/%.1f", c.ttfcP50(), c.ttfcP99()),
                        String.format(Locale.ROOT, "%.2f/%.2f", c.durP50() / 1000, c.durMax() / 1000),
                        String.format(Locale.ROOT, "%.1f->%.1f", c.heapBefore() / 1e6, c.heapAfter() / 1e6),
                        via ? String.format(Locale.ROOT, "%d (%d)", c.peakThreads(), c.peakOwnThreads()) : c.peakThreads() + " (-)");
                    if (c.firstError() != null) line("   first error: %s", c.firstError());
                    if (c.listenOverflows() > 0) {
                        line("   %d TCP listen-queue overflow(s) during this round (system-wide TcpExt ListenOverflows): a dropped", c.listenOverflows());
                        line("   connection attempt is retried after ~1 s, which shows as a TTFC or duration outlier of that size.");
                    }
                    if (via) pools.add(String.format(Locale.ROOT, "   %d via: own threads idle %d, at peak %s", k, c.ownThreadsIdle(),
                        c.poolsAtPeak().isEmpty() ? "no name with 3+ threads (virtual threads are not counted)" : c.poolsAtPeak()));
                    ObjectNode o = rows.addObject();
                    o.put("clients", k);
                    o.put("path", via ? "via" : "direct");
                    o.put("chunks", c.chunks());
                    o.put("delay_ms", c.delayMs());
                    o.put("wall_ms", round(c.wallMs()));
                    o.put("ideal_ms", round(c.idealMs()));
                    o.put("errors", c.errors());
                    o.put("ttfc_p50_ms", round(c.ttfcP50()));
                    o.put("ttfc_p99_ms", round(c.ttfcP99()));
                    o.put("duration_p50_ms", round(c.durP50()));
                    o.put("duration_max_ms", round(c.durMax()));
                    o.put("heap_before_mb", round(c.heapBefore() / 1e6));
                    o.put("heap_after_mb", round(c.heapAfter() / 1e6));
                    o.put("heap_peak_sampled_mb", round(c.heapPeakSampled() / 1e6));
                    o.put("threads_before", c.threadsBefore());
                    o.put("peak_threads_jvm", c.peakThreads());
                    o.put("peak_threads_excl_stub_and_client", c.peakOwnThreads());
                    o.put("threads_excl_stub_and_client_idle", c.ownThreadsIdle());
                    o.put("threads_after", c.threadsAfter());
                    o.put("pools_at_peak", c.poolsAtPeak());
                    o.put("listen_overflows", c.listenOverflows());
                }
            }
            line("   heap: used after GC, whole JVM. threads: live platform threads, JVM peak and (own) = without the stub's");
            line("   stub-upstream-* and the client's bench-* threads, i.e. copilot-api + JVM internals; by name at the peak:");
            pools.forEach(p -> line("%s", p));
        }

        ConcurrencyResult concurrentRound(int k, boolean via) throws Exception {
            drainQueues();
            int chunks = cfg.concurrentChunks();
            long delay = cfg.concurrentDelayMs();
            StubUpstream.Reply reply = StubUpstream.Reply.sse(chatChunks(chunks, "gpt-4.1")).delayMs(delay);
            for (int i = 0; i < k; i++) rig.stub.enqueue("/chat/completions", reply);
            String body = "{\"model\":\"gpt-4.1\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";

            long heapBefore = heapAfterGc();
            long overflowsBefore = listenOverflows();
            int threadsBefore = threads.getThreadCount();
            int ownIdle = ownThreads(null);
            threads.resetPeakThreadCount();
            Sampler sampler = new Sampler();
            sampler.start();

            StreamResult[] results = new StreamResult[k];
            CountDownLatch go = new CountDownLatch(1);
            List<Thread> clients = new ArrayList<>();
            for (int i = 0; i < k; i++) {
                int idx = i;
                Thread t = new Thread(() -> {
                    try {
                        go.await();
                        HttpRequest req = via ? viaRequest("/v1/chat/completions", body, Map.of()) : direct("/chat/completions", body, true).build();
                        results[idx] = stream(req, "[DONE]");
                    } catch (InterruptedException e) {
                        results[idx] = StreamResult.failed("interrupted");
                    }
                }, "bench-client-" + i);
                t.setDaemon(true);
                clients.add(t);
                t.start();
            }
            long t0 = System.nanoTime();
            go.countDown();
            long deadline = t0 + TimeUnit.SECONDS.toNanos(60);
            for (Thread t : clients) t.join(Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime())));
            double wallMs = (System.nanoTime() - t0) / 1e6;
            long overflows = overflowsBefore < 0 ? -1 : listenOverflows() - overflowsBefore;
            sampler.stop();
            int peak = threads.getPeakThreadCount();

            int errors = 0;
            String firstError = null;
            List<Long> ttfc = new ArrayList<>();
            List<Long> dur = new ArrayList<>();
            for (StreamResult r : results) {
                boolean ok = r != null && r.ok() && r.events() >= chunks;
                if (!ok) {
                    errors++;
                    if (firstError == null) firstError = r == null ? "no result within 60 s" : r.error() != null ? r.error()
                        : "status " + r.status() + ", " + r.events() + " events" + (r.complete() ? "" : ", no [DONE]");
                } else {
                    ttfc.add(r.ttfcNanos());
                    dur.add(r.totalNanos());
                }
            }
            drainQueues();
            int threadsAfter = threads.getThreadCount();
            long heapAfter = heapAfterGc();
            Latencies lt = new Latencies(ttfc.stream().mapToLong(Long::longValue).toArray(), 0, null);
            Latencies ld = new Latencies(dur.stream().mapToLong(Long::longValue).toArray(), 0, null);
            return new ConcurrencyResult(k, chunks, delay, wallMs, (chunks - 1) * delay, errors, firstError, lt.pct(50), lt.pct(99),
                ld.pct(50), ld.max(), heapBefore, heapAfter, sampler.heapPeak, threadsBefore, peak, sampler.ownPeak, ownIdle,
                threadsAfter, sampler.poolsAtPeak, overflows);
        }

        /**
         * Platform threads that belong neither to the stub nor to this benchmark's client; when {@code pools} is
         * given, also counted by name with the numbers taken out ("JettyServerThreadPool-12" -> "JettyServerThreadPool-").
         */
        int ownThreads(Map<String, Integer> pools) {
            ThreadInfo[] infos = threads.getThreadInfo(threads.getAllThreadIds(), 0);
            int n = 0;
            for (ThreadInfo i : infos) {
                if (i == null) continue;
                String name = i.getThreadName();
                if (name.startsWith("stub-upstream") || name.startsWith("bench-")) continue;
                n++;
                if (pools != null) pools.merge(name.replaceAll("\\d+", "#"), 1, Integer::sum);
            }
            return n;
        }

        /** Samples heap use and copilot-api's share of platform threads every 20 ms. */
        final class Sampler implements Runnable {
            volatile boolean running = true;
            volatile long heapPeak;
            volatile int ownPeak;
            volatile String poolsAtPeak = "";
            final Thread thread = new Thread(this, "bench-sampler");

            void start() {
                thread.setDaemon(true);
                thread.start();
            }

            void stop() throws InterruptedException {
                running = false;
                thread.join(2000);
            }

            @Override
            public void run() {
                while (running) {
                    heapPeak = Math.max(heapPeak, memory.getHeapMemoryUsage().getUsed());
                    Map<String, Integer> pools = new HashMap<>();
                    int own = ownThreads(pools);
                    if (own > ownPeak) {
                        ownPeak = own;
                        poolsAtPeak = pools.entrySet().stream().filter(e -> e.getValue() >= 3)
                            .sorted(Map.Entry.<String, Integer>comparingByValue().reversed())
                            .map(e -> e.getKey() + " " + e.getValue()).collect(Collectors.joining(", "));
                    }
                    try {
                        Thread.sleep(20);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
            }
        }

        // ---- Helpers ----

        /** Unplayed scripted replies would poison the next measurement: reset the stub's queues if any are left. */
        void drainQueues() {
            StubUpstream stub = rig.stub;
            if (stub.pending("/chat/completions") > 0 || stub.pending("/v1/messages") > 0) {
                stub.reset();
            }
            stub.clear();
        }

        long heapAfterGc() throws InterruptedException {
            rig.stub.clear();
            for (int i = 0; i < 3; i++) {
                System.gc();
                Thread.sleep(100);
            }
            return memory.getHeapMemoryUsage().getUsed();
        }

        void line(String format, Object... args) {
            table.append(String.format(Locale.ROOT, format, args)).append('\n');
        }

        static void progress(String what) {
            System.err.println("[bench] " + what);
        }

        @Override
        public void close() {
            rig.close();
            clientPool.shutdownNow();
        }
    }

    // ==== Side by side: copilot-api as a separate process, and any other proxy given by base URL ====

    /** Sizes of the side-by-side run. */
    record SxsConfig(String name, Duration warm, Duration measure, int chunkRuns, int chunks, int openStreams, Duration settle, int startRuns,
                     int rounds) {
        static SxsConfig full() {
            // 10 s of load before each row: a server runs for hours, and a JVM's JIT is still busy after 2 s (profiles
            // of the small-chat row put 31-44% of the proxy's CPU in the JIT then, 1-35% after 15 s)
            return new SxsConfig("full", Duration.ofSeconds(10), Duration.ofSeconds(8), 5, 2000, 100, Duration.ofSeconds(65), 3, 1);
        }

        static SxsConfig quick() {
            return new SxsConfig("quick", Duration.ofMillis(500), Duration.ofSeconds(2), 2, 2000, 100, Duration.ofSeconds(5), 1, 1);
        }
    }

    /** Options of the side-by-side table (see the usage at the top of this file). */
    static final class SxsOptions {
        String target = "copilot-api";
        long targetPid = -1;
        String compare;
        long comparePid = -1;
        String compareName = "other";
        String compareStart;
        int compareWaitSeconds = 120;
        int stubPort;
    }

    /** A proxy under test: its base URL and the pid whose /proc/PID/status is read. */
    static final class Target {
        final String name;
        final String base;
        long pid;
        Process process;

        Target(String name, String base, long pid) {
            this.name = name;
            this.base = base.replaceAll("/+$", "");
            this.pid = pid;
        }
    }

    /** Load result: completions within the measured window. */
    record Load(double rps, long ok, long errors, String firstError, double p50, double p99, double cpuMsPerRequest) {}

    static final class SideBySide implements AutoCloseable {
        static volatile StringBuffer table;

        final SxsConfig cfg;
        final SxsOptions opt;
        final StubUpstream stub;
        final Path home;
        final CopilotApi.Settings settings;
        final HttpClient client;
        final StringBuffer out = new StringBuffer();
        final ObjectNode json;
        final Thread clearer;
        Target cp;
        Target other;
        /** CPU ms per request of each proxy process, by load row. */
        final Map<String, double[]> cpuRows = new java.util.LinkedHashMap<>();
        String copilotToken;
        String ccStream;
        String ccPlain;
        String ccAsSent;

        SideBySide(SxsConfig cfg, SxsOptions opt, ObjectNode json) throws Exception {
            this.cfg = cfg;
            this.opt = opt;
            this.json = json;
            table = out;
            stub = StubUpstream.start(opt.stubPort);
            home = Files.createTempDirectory("copilot-api-bench-sxs");
            settings = Rig.stubSettings(stub, home);
            AtomicInteger n = new AtomicInteger();
            client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).connectTimeout(Duration.ofSeconds(10))
                .executor(Executors.newCachedThreadPool(r -> {
                    Thread t = new Thread(r, "bench-sxs-http-" + n.incrementAndGet());
                    t.setDaemon(true);
                    return t;
                })).build();
            // Recorded requests (86 KB bodies under load) would pile up in this JVM: forget them twice a second.
            clearer = new Thread(() -> {
                while (!Thread.currentThread().isInterrupted()) {
                    stub.clear();
                    try {
                        Thread.sleep(500);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
            }, "bench-sxs-clearer");
            clearer.setDaemon(true);
            clearer.start();
            String cc = claudeCodeRequest(86 * 1024, false);
            ccAsSent = claudeCodeRequest(4 * 1024, true);
            ccStream = cc;
            ObjectNode plain = (ObjectNode) JSON.readTree(cc);
            plain.put("stream", false);
            ccPlain = plain.toString();
            Bench.progress("side-by-side stub on " + stub.baseUrl() + "; point the other proxy at it:");
            stub.env().forEach((k, v) -> System.err.println("  " + k + "=" + v));
            System.err.println("  COPILOT_API_GITHUB_TOKEN=" + StubUpstream.VALID_GITHUB_TOKEN);
        }

        Map<String, String> processEnv() {
            Map<String, String> env = new HashMap<>(stub.env());
            env.put("COPILOT_API_HOME", home.toString());
            return env;
        }

        void line(String format, Object... args) {
            out.append(String.format(Locale.ROOT, format, args)).append('\n');
        }

        int run() throws Exception {
            if (opt.compare != null) {
                other = new Target(opt.compareName, opt.compare, opt.comparePid);
                Bench.progress("waiting up to " + opt.compareWaitSeconds + " s for " + other.base + "/v1/models to answer 200");
                if (waitReady(other.base, null, Duration.ofSeconds(opt.compareWaitSeconds)) < 0) {
                    System.err.println("the other proxy at " + other.base + " did not answer 200 on /v1/models");
                    return 4;
                }
                if (other.pid <= 0) other.pid = pidListeningOn(URI.create(other.base).getPort());
            }
            if (opt.target.equals("copilot-api")) {
                Bench.progress("starting copilot-api as a process: ./jbang copilot-api.java start");
                cp = new Target("copilot-api", "http://127.0.0.1:" + freePort(), -1);
                cp.process = startJbang(URI.create(cp.base).getPort());
                if (waitReady(cp.base, cp.process, Duration.ofMinutes(3)) < 0) throw new IllegalStateException("copilot-api did not start");
                cp.pid = pidListeningOn(URI.create(cp.base).getPort());
            } else {
                cp = new Target("copilot-api", opt.target, opt.targetPid);
                if (waitReady(cp.base, null, Duration.ofSeconds(30)) < 0) throw new IllegalStateException(cp.base + " is not ready");
                if (cp.pid <= 0) cp.pid = pidListeningOn(URI.create(cp.base).getPort());
            }
            HttpResponse<String> t = client.send(HttpRequest.newBuilder(URI.create(cp.base + "/token")).GET().build(),
                HttpResponse.BodyHandlers.ofString());
            copilotToken = t.statusCode() == 200 ? JSON.readTree(t.body()).path("token").asText() : null;
            List<Target> targets = other == null ? List.of(cp) : List.of(cp, other);

            line("");
            line("5. Side by side, %s run, %s", cfg.name(), java.time.ZonedDateTime.now(java.time.ZoneOffset.UTC).withNano(0));
            line("   copilot-api: %s, pid %d, %s", cp.base, cp.pid, describe(cp.pid));
            if (other != null) line("   %s: %s, pid %d, %s", other.name, other.base, other.pid, describe(other.pid));
            line("   stub (fake GitHub + Copilot, in the benchmark JVM): %s", stub.baseUrl());
            line("   %d CPUs shared by the load generator (JDK HttpClient, this JVM), the stub (this JVM) and the proxy under test:",
                Runtime.getRuntime().availableProcessors());
            line("   req/s are what the whole machine sustains through each proxy, not the proxy alone. Load: %s s warm-up, %s s measured.",
                cfg.warm().toMillis() / 1000.0, cfg.measure().toMillis() / 1000.0);
            Map<String, double[]> rows = new java.util.LinkedHashMap<>();

            for (Target x : targets) {
                String err = post(x.base + "/v1/messages", ccAsSent, true, "message_stop");
                line("   %s with Claude Code's request as sent (x-anthropic-billing-header line in system): %s", x.name,
                    err == null ? "200, stream complete" : err);
            }
            line("   The load rows below send it without that line, so that every proxy under test can answer it.");

            // ---- load rows ----
            String small = "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            String streamBody = "{\"model\":\"gpt-4.1\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Write a long story\"}]}";
            StubUpstream.Reply longStream = StubUpstream.Reply.sse(chatChunks(cfg.chunks(), "gpt-4.1"));
            List<String> notes = new ArrayList<>();
            for (Target x : targets) {
                // A first pass to warm the JIT and the connection pools of every path, not measured.
                load(4, Duration.ZERO, cfg.warm(), () -> post(x.base + "/v1/chat/completions", small, false, null));
                load(2, Duration.ZERO, cfg.warm(), () -> post(x.base + "/v1/messages", ccPlain, false, null));
            }
            rows.put("small chat, non-stream, 16 clients|req/s", loadRow("small chat", targets, 16,
                base -> () -> post(base + "/v1/chat/completions", small, false, null),
                copilotToken == null ? null : () -> postDirect("/chat/completions", small, false, null), notes));
            rows.put("chat stream, " + cfg.chunks() + " chunks, 4 clients|req/s", loadRow("chat stream", targets, 4,
                base -> () -> post(base + "/v1/chat/completions", streamBody, true, "[DONE]", "/chat/completions", longStream),
                copilotToken == null ? null : () -> postDirect("/chat/completions", streamBody, true, "[DONE]", "/chat/completions", longStream), notes));
            rows.put("Claude Code request (" + ccPlain.length() / 1024 + " KB), /v1/messages non-stream|req/s", loadRow("CC non-stream", targets, 4,
                base -> () -> post(base + "/v1/messages", ccPlain, false, null), null, notes));
            rows.put("Claude Code request (" + ccStream.length() / 1024 + " KB), /v1/messages stream|req/s", loadRow("CC stream", targets, 4,
                base -> () -> post(base + "/v1/messages", ccStream, true, "message_stop"), null, notes));

            cpuRows.forEach((name, cpu) -> rows.put("  CPU of the proxy process per request, " + name + "|ms", cpu));

            // ---- memory right after the load ----
            Map<String, Long> rss = new HashMap<>();
            Map<String, Long> hwm = new HashMap<>();
            for (Target x : targets) {
                Map<String, String> st = status(x.pid);
                rss.put(x.name, kbOf(st.get("VmRSS")));
                hwm.put(x.name, kbOf(st.get("VmHWM")));
            }

            // ---- added time per chunk ----
            Bench.progress("side-by-side: time per streamed chunk, " + cfg.chunkRuns() + " sequential runs each");
            double directMs = copilotToken == null ? Double.NaN
                : medianStreamMs(() -> postDirect("/chat/completions", streamBody, true, "[DONE]", "/chat/completions", longStream));
            double[] perChunk = new double[2];
            for (int i = 0; i < targets.size(); i++) {
                Target x = targets.get(i);
                double ms = medianStreamMs(() -> post(x.base + "/v1/chat/completions", streamBody, true, "[DONE]", "/chat/completions", longStream));
                perChunk[i] = (ms - directMs) * 1000.0 / cfg.chunks();
            }
            rows.put("added time per streamed chunk over the stub directly|us", new double[] {perChunk[0], other == null ? Double.NaN : perChunk[1],
                Double.NaN});
            rows.put("resident memory after the load, VmRSS|MB", new double[] {rss.get(cp.name) / 1024.0,
                other == null ? Double.NaN : rss.get(other.name) / 1024.0, Double.NaN});
            rows.put("peak resident memory, VmHWM|MB", new double[] {hwm.get(cp.name) / 1024.0,
                other == null ? Double.NaN : hwm.get(other.name) / 1024.0, Double.NaN});

            // ---- 100 open streams ----
            int[][] th = new int[targets.size()][];
            long[] ends = new long[targets.size()];
            for (int i = 0; i < targets.size(); i++) {
                Bench.progress("side-by-side: " + cfg.openStreams() + " open streams on " + targets.get(i).name);
                th[i] = openStreams(targets.get(i));
                ends[i] = System.nanoTime();
            }
            Bench.progress("side-by-side: waiting up to " + cfg.settle().toSeconds() + " s for the thread counts to settle");
            double[] backAfter = new double[targets.size()];
            int[] last = new int[targets.size()];
            Arrays.fill(backAfter, Double.NaN);
            long settleEnd = ends[targets.size() - 1] + cfg.settle().toNanos();
            while (true) {
                boolean all = true;
                for (int i = 0; i < targets.size(); i++) {
                    if (!Double.isNaN(backAfter[i])) continue;
                    last[i] = threadsOf(targets.get(i).pid);
                    if (last[i] <= th[i][0]) backAfter[i] = (System.nanoTime() - ends[i]) / 1e9;
                    else all = false;
                }
                if (all || System.nanoTime() > settleEnd) break;
                Thread.sleep(250);
            }
            int s = cfg.openStreams();
            rows.put("threads idle before " + s + " open streams|n", new double[] {th[0][0], other == null ? Double.NaN : th[1][0], Double.NaN});
            rows.put("threads with " + s + " open streams (peak)|n", new double[] {th[0][1], other == null ? Double.NaN : th[1][1], Double.NaN});
            rows.put("  added threads per open stream|n", new double[] {(th[0][1] - th[0][0]) / (double) s,
                other == null ? Double.NaN : (th[1][1] - th[1][0]) / (double) s, Double.NaN});
            rows.put("threads after the streams end (last poll)|n", new double[] {last[0], other == null ? Double.NaN : last[1], Double.NaN});
            rows.put("  back to the idle count after|s", new double[] {backAfter[0], other == null ? Double.NaN : backAfter[1], Double.NaN});
            for (int i = 0; i < targets.size(); i++) if (th[i][2] > 0) notes.add(targets.get(i).name + ": " + th[i][2] + " of the open streams failed");

            // ---- startup ----
            double[] jbangStart = {Double.NaN, Double.NaN};
            double jvmStart = Double.NaN;
            if (opt.target.equals("copilot-api")) {
                Bench.progress("side-by-side: warm starts of copilot-api, " + cfg.startRuns() + " each way");
                String java = Path.of("/proc/" + cp.pid + "/exe").toRealPath().toString();
                String cpath = classpath();
                List<Long> a = new ArrayList<>();
                List<Long> b = new ArrayList<>();
                List<String> runtimeOptions = null;
                for (int i = 0; i < cfg.startRuns(); i++) {
                    a.add(timeStart(port -> startJbang(port)));
                    if (cpath != null) {
                        // asked once, outside the timed start (it is a JBang run itself, ~1 s), and after a jbang start,
                        // which leaves the //CDS archive behind if this source had none yet
                        if (runtimeOptions == null) runtimeOptions = jbangRuntimeOptions();
                        List<String> options = runtimeOptions;
                        b.add(timeStart(port -> {
                            List<String> command = new ArrayList<>(List.of(java));
                            command.addAll(options);
                            command.addAll(List.of("-cp", cpath, "copilotapi.CopilotApi", "start", "--port", String.valueOf(port),
                                "--github-token", StubUpstream.VALID_GITHUB_TOKEN));
                            return start(command, processEnv());
                        }));
                    }
                }
                jbangStart[0] = median(a.stream().mapToLong(Long::longValue).toArray()) / 1e9;
                if (!b.isEmpty()) jvmStart = median(b.stream().mapToLong(Long::longValue).toArray()) / 1e9;
            }
            if (other != null && opt.compareStart != null) {
                Bench.progress("side-by-side: warm starts of " + other.name + ", " + cfg.startRuns());
                List<Long> c = new ArrayList<>();
                for (int i = 0; i < cfg.startRuns(); i++) {
                    c.add(timeStart(port -> {
                        Map<String, String> env = processEnv();
                        env.put("STUB_URL", stub.baseUrl());
                        return start(List.of("sh", "-c", opt.compareStart.replace("{port}", String.valueOf(port))
                            .replace("{stub}", stub.baseUrl()).replace("{token}", StubUpstream.VALID_GITHUB_TOKEN)), env);
                    }));
                }
                jbangStart[1] = median(c.stream().mapToLong(Long::longValue).toArray()) / 1e9;
            }
            rows.put("warm start, ./jbang copilot-api.java start, to 200 on /v1/models|s",
                new double[] {jbangStart[0], jbangStart[1], Double.NaN});
            rows.put("  JVM alone (java -cp <jbang classpath> CopilotApi start)|s", new double[] {jvmStart, Double.NaN, Double.NaN});

            print(rows, notes);
            return 0;
        }

        // ---- the table ----

        void print(Map<String, double[]> rows, List<String> notes) {
            String on = other == null ? "(no --compare)" : other.name;
            line("%-64s %6s %12s %12s %7s %10s  %-12s %s", "row", "unit", "copilot-api", on, "ratio", "direct", "target", "copilot-api");
            ArrayNode a = json.putArray("side_by_side");
            for (Map.Entry<String, double[]> e : rows.entrySet()) {
                String[] k = e.getKey().split("\\|");
                String label = k[0];
                String unit = k[1];
                double[] v = e.getValue();
                double ratio = v[1] > 0 || v[1] < 0 ? v[0] / v[1] : Double.NaN;
                String[] target = targetOf(label, unit, v, ratio);
                line("%-64s %6s %12s %12s %7s %10s  %-12s %s", label, unit, fmt(v[0]), fmt(v[1]), Double.isFinite(ratio) ? String.format(Locale.ROOT, "%.2f", ratio) : "-",
                    fmt(v[2]), target[0], target[1]);
                ObjectNode o = a.addObject();
                o.put("row", label);
                o.put("unit", unit);
                o.put("copilot_api", round(v[0]));
                o.put("other", round(v[1]));
                o.put("ratio", Double.isFinite(ratio) ? round(ratio) : -1);
                o.put("direct", round(v[2]));
                o.put("target", target[0]);
                o.put("result", target[1]);
            }
            line("   ratio = copilot-api / %s; direct = the load generator straight to the stub (a ceiling for the load rows).", on);
            line("   Load rows: closed loop, each client sends its next request when the previous answer is read to the end.");
            line("   CPU per request: utime+stime of the proxy's process (/proc/PID/stat) over the measured window / requests;");
            line("   less sensitive than req/s to what else runs on the shared CPUs (10 ms ticks, so rough at low counts).");
            line("   Threads: /proc/PID/status Threads of each process; 'added per stream' = (peak - idle) / streams. RSS: VmRSS, VmHWM.");
            line("   Start: copilot-api on the java jbang picks (shown above); the other's column is --compare-start's command, when given.");
            line("   Claude Code rows: Claude Code's request from tests/fixtures, model claude-sonnet-4.5, history padded to the size;");
            line("   each proxy sends it where it chooses (copilot-api: Copilot's native /v1/messages; others may translate to chat).");
            for (String n : notes) line("   note: %s", n);
        }

        String[] targetOf(String label, String unit, double[] v, double ratio) {
            if (unit.equals("req/s")) {
                if (other == null) return new String[] {"ratio>=1.5", "-"};
                if (!(v[1] > 0) || !(v[0] > 0)) return new String[] {"ratio>=1.5", "n/a (errors)"};
                return new String[] {"ratio>=1.5", ratio >= 1.5 ? "PASS" : "FAIL"};
            }
            if (label.startsWith("added time per streamed chunk")) return new String[] {"<=10 us", pass(v[0] <= 10)};
            if (label.startsWith("peak resident")) return new String[] {"<=250 MB", pass(v[0] <= 250)};
            if (label.contains("added threads per open stream")) return new String[] {"<=1.2", pass(v[0] <= 1.2)};
            if (label.contains("back to the idle count")) {
                return new String[] {"<=60 s", Double.isNaN(v[0]) && cfg.settle().toSeconds() < 60 ? "not in " + cfg.settle().toSeconds() + " s"
                    : pass(v[0] <= 60)};
            }
            if (label.startsWith("warm start")) return new String[] {"<=2 s", pass(v[0] <= 2)};
            if (label.contains("JVM alone")) return new String[] {"<=0.8 s", pass(v[0] <= 0.8)};
            return new String[] {"", ""};
        }

        /** The median of the finite values; NaN when there are none. */
        static double medianOf(double[] values) {
            double[] v = Arrays.stream(values).filter(Double::isFinite).sorted().toArray();
            if (v.length == 0) return Double.NaN;
            return v.length % 2 == 1 ? v[v.length / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
        }

        static String list(double[] values) {
            return Arrays.stream(values).mapToObj(SideBySide::fmt).collect(java.util.stream.Collectors.joining(" "));
        }

        static String pass(boolean ok) {
            return ok ? "PASS" : "FAIL";
        }

        static String fmt(double v) {
            if (!Double.isFinite(v)) return "-";
            if (Math.abs(v) >= 100 || v == Math.rint(v)) return String.format(Locale.ROOT, "%.0f", v);
            if (Math.abs(v) < 1) return String.format(Locale.ROOT, "%.3f", v);
            return String.format(Locale.ROOT, "%.2f", v);
        }

        // ---- load ----

        interface LoadCall {
            String run() throws Exception;
        }

        interface CallFor {
            LoadCall of(String base);
        }

        double[] loadRow(String name, List<Target> targets, int clients, CallFor call, LoadCall direct, List<String> notes) throws Exception {
            double[] v = {Double.NaN, Double.NaN, Double.NaN};
            double[] cpu = {Double.NaN, Double.NaN, Double.NaN};
            cpuRows.put(name, cpu);
            int rounds = cfg.rounds();
            double[][] rps = new double[targets.size()][rounds];
            double[][] cpus = new double[targets.size()][rounds];
            for (int r = 0; r < rounds; r++) {
                for (int k = 0; k < targets.size(); k++) {
                    // ABBA order: whatever drifts on the machine during a row (another process, the page cache, the
                    // CPU's clock) falls on both proxies alike, and each round's ratio is taken between neighbours
                    int i = r % 2 == 0 ? k : targets.size() - 1 - k;
                    Target x = targets.get(i);
                    Bench.progress("side-by-side: " + name + ", " + clients + " clients, " + x.name
                        + (rounds > 1 ? ", round " + (r + 1) + " of " + rounds : ""));
                    // the first round warms each proxy fully; later ones only refill what the other proxy's turn cooled
                    Duration warm = r == 0 ? cfg.warm() : Duration.ofMillis(Math.min(cfg.warm().toMillis(), 2000));
                    quiesce(targets);
                    Load l = load(clients, warm, cfg.measure(), call.of(x.base), x.pid);
                    rps[i][r] = l.rps();
                    cpus[i][r] = l.cpuMsPerRequest();
                    if (l.errors() > 0) notes.add(String.format(Locale.ROOT, "%s on %s%s: %d error(s) of %d, first: %s", name, x.name,
                        rounds > 1 ? " (round " + (r + 1) + ")" : "", l.errors(), l.errors() + l.ok(), l.firstError()));
                    drainQueues();
                }
            }
            for (int i = 0; i < targets.size(); i++) {
                v[i] = medianOf(rps[i]);
                cpu[i] = medianOf(cpus[i]);
            }
            if (rounds > 1 && targets.size() == 2) {
                double[] ratios = new double[rounds];
                double[] cpuRatios = new double[rounds];
                for (int r = 0; r < rounds; r++) {
                    ratios[r] = rps[0][r] / rps[1][r];
                    cpuRatios[r] = cpus[0][r] / cpus[1][r];
                }
                notes.add(String.format(Locale.ROOT, "%s, %d rounds: req/s ratio per round %s (median %.2f); CPU per request ratio per round %s"
                    + " (median %.2f); copilot-api %s req/s, %s %s req/s", name, rounds, list(ratios), medianOf(ratios), list(cpuRatios),
                    medianOf(cpuRatios), list(rps[0]), targets.get(1).name, list(rps[1])));
                json.withArray("side_by_side_rounds").addObject().put("row", name).put("rounds", rounds)
                    .put("median_ratio", round(medianOf(ratios))).put("median_cpu_ratio", round(medianOf(cpuRatios)))
                    .putPOJO("ratios", ratios).putPOJO("cpu_ratios", cpuRatios);
            }
            if (direct != null) {
                Bench.progress("side-by-side: " + name + ", " + clients + " clients, direct to the stub");
                Load l = load(clients, cfg.warm(), cfg.measure(), direct);
                v[2] = l.rps();
                drainQueues();
            }
            return v;
        }

        Load load(int clients, Duration warm, Duration measure, LoadCall call) throws InterruptedException {
            return load(clients, warm, measure, call, -1);
        }

        /**
         * Waits, up to 15 s, until the proxies and this JVM are idle (each under 5% of a core over half a second). A JVM
         * goes on compiling what its last load taught it for seconds after the load stops; on shared CPUs that work
         * would be taken from whichever proxy is measured next, so the first round of a row went to the proxy
         * measured right after the other one's warm-up at a disadvantage.
         */
        void quiesce(List<Target> targets) throws InterruptedException {
            List<Long> pids = new ArrayList<>();
            for (Target t : targets) if (t.pid > 0) pids.add(t.pid);
            pids.add(ProcessHandle.current().pid());
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
            while (System.nanoTime() < end) {
                long[] before = pids.stream().mapToLong(SideBySide::cpuTicks).toArray();
                Thread.sleep(500);
                boolean idle = true;
                for (int i = 0; i < before.length; i++) idle &= cpuTicks(pids.get(i)) - before[i] <= CLOCK_TICKS * 0.5 * 0.05;
                if (idle) return;
            }
        }

        /** Closed-loop load; with a pid, also the CPU time that process used per request in the measured window. */
        Load load(int clients, Duration warm, Duration measure, LoadCall call, long pid) throws InterruptedException {
            long t0 = System.nanoTime();
            long from = t0 + warm.toNanos();
            long to = from + measure.toNanos();
            long[] cpu = {-1, -1};
            Thread cpuSampler = new Thread(() -> {
                try {
                    TimeUnit.NANOSECONDS.sleep(Math.max(0, from - System.nanoTime()));
                    cpu[0] = cpuTicks(pid);
                    TimeUnit.NANOSECONDS.sleep(Math.max(0, to - System.nanoTime()));
                    cpu[1] = cpuTicks(pid);
                } catch (InterruptedException ignored) {
                    // no figure
                }
            }, "bench-cpu");
            cpuSampler.setDaemon(true);
            if (pid > 0) cpuSampler.start();
            java.util.concurrent.atomic.AtomicLong ok = new java.util.concurrent.atomic.AtomicLong();
            java.util.concurrent.atomic.AtomicLong errors = new java.util.concurrent.atomic.AtomicLong();
            java.util.concurrent.atomic.AtomicReference<String> first = new java.util.concurrent.atomic.AtomicReference<>();
            List<long[]> lat = java.util.Collections.synchronizedList(new ArrayList<>());
            List<Thread> threads = new ArrayList<>();
            for (int c = 0; c < clients; c++) {
                Thread t = new Thread(() -> {
                    long[] mine = new long[1024];
                    int n = 0;
                    while (true) {
                        long s = System.nanoTime();
                        if (s >= to) break;
                        String err;
                        try {
                            err = call.run();
                        } catch (Exception e) {
                            err = e.toString();
                        }
                        long e = System.nanoTime();
                        if (e < from || e > to) continue;
                        if (err == null) {
                            ok.incrementAndGet();
                            if (n == mine.length) mine = Arrays.copyOf(mine, n * 2);
                            mine[n++] = e - s;
                        } else {
                            errors.incrementAndGet();
                            first.compareAndSet(null, err);
                        }
                    }
                    lat.add(Arrays.copyOf(mine, n));
                }, "bench-load-" + c);
                t.setDaemon(true);
                threads.add(t);
                t.start();
            }
            for (Thread t : threads) t.join(measure.toMillis() + warm.toMillis() + 60_000);
            if (pid > 0) cpuSampler.join(10_000);
            double cpuMs = cpu[0] < 0 || cpu[1] < 0 || ok.get() == 0 ? Double.NaN : (cpu[1] - cpu[0]) * 1000.0 / CLOCK_TICKS / ok.get();
            long[] all = lat.stream().flatMapToLong(Arrays::stream).toArray();
            Latencies l = new Latencies(all, 0, null);
            return new Load(ok.get() / (measure.toNanos() / 1e9), ok.get(), errors.get(), first.get(), l.pct(50), l.pct(99), cpuMs);
        }

        String post(String url, String body, boolean stream, String endMarker) throws Exception {
            return post(url, body, stream, endMarker, null, null);
        }

        String post(String url, String body, boolean stream, String endMarker, String stubPath, StubUpstream.Reply reply) throws Exception {
            HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(url)).timeout(REQUEST_TIMEOUT).header("content-type", "application/json");
            if (url.endsWith("/v1/messages")) {
                b.header("anthropic-version", "2023-06-01").header("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14")
                    .header("x-api-key", "bench");
            }
            if (stream) b.header("accept", "text/event-stream");
            return send(b.POST(HttpRequest.BodyPublishers.ofString(body)).build(), stream, endMarker, stubPath, reply);
        }

        String postDirect(String path, String body, boolean stream, String endMarker) throws Exception {
            return postDirect(path, body, stream, endMarker, null, null);
        }

        /** To the stub's Copilot API with the headers copilot-api sends (its token from copilot-api's /token). */
        String postDirect(String path, String body, boolean stream, String endMarker, String stubPath, StubUpstream.Reply reply) throws Exception {
            HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(stub.copilotUrl() + path)).timeout(REQUEST_TIMEOUT)
                .header("authorization", "Bearer " + copilotToken)
                .header("copilot-integration-id", CopilotApi.EditorHeaders.INTEGRATION_ID)
                .header("openai-intent", settings.editor().intent())
                .header("x-request-id", UUID.randomUUID().toString())
                .header("x-initiator", "user")
                .header("accept", stream ? "text/event-stream" : "application/json")
                .header("content-type", "application/json");
            settings.editor().headers().forEach(b::header);
            return send(b.POST(HttpRequest.BodyPublishers.ofString(body)).build(), stream, endMarker, stubPath, reply);
        }

        /** Null when the answer is a 200 read to the end (and, streamed, ending with the marker), else what went wrong. */
        String send(HttpRequest req, boolean stream, String endMarker, String stubPath, StubUpstream.Reply reply) throws Exception {
            if (reply != null) stub.enqueue(stubPath, reply);
            HttpResponse<InputStream> r = client.send(req, HttpResponse.BodyHandlers.ofInputStream());
            try (InputStream in = r.body()) {
                byte[] buf = new byte[16384];
                byte[] tail = new byte[256];
                int tailLen = 0;
                long total = 0;
                for (int n = in.read(buf); n >= 0; n = in.read(buf)) {
                    total += n;
                    if (n >= tail.length) {
                        System.arraycopy(buf, n - tail.length, tail, 0, tail.length);
                        tailLen = tail.length;
                    } else {
                        int keep = Math.min(tailLen, tail.length - n);
                        System.arraycopy(tail, tailLen - keep, tail, 0, keep);
                        System.arraycopy(buf, 0, tail, keep, n);
                        tailLen = keep + n;
                    }
                }
                String end = new String(tail, 0, tailLen, UTF_8);
                if (r.statusCode() != 200) return "status " + r.statusCode() + ": " + shorten(end);
                if (total == 0) return "empty body";
                if (stream && !end.contains(endMarker)) return "stream without " + endMarker + ": ..." + shorten(end);
                return null;
            }
        }

        double medianStreamMs(LoadCall call) throws Exception {
            drainQueues();
            String warm = call.run();
            if (warm != null) {
                Bench.progress("stream failed: " + warm);
                return Double.NaN;
            }
            long[] t = new long[cfg.chunkRuns()];
            for (int i = 0; i < t.length; i++) {
                long s = System.nanoTime();
                String err = call.run();
                t[i] = err == null ? System.nanoTime() - s : Long.MAX_VALUE / 4;
            }
            drainQueues();
            return median(t) / 1e6;
        }

        /** {idle threads before, peak threads while open, failed streams}. */
        int[] openStreams(Target x) throws Exception {
            drainQueues();
            StubUpstream.Reply slow = StubUpstream.Reply.sse(chatChunks(40, "gpt-4.1")).delayMs(50);
            String body = "{\"model\":\"gpt-4.1\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}";
            int idle = threadsOf(x.pid);
            AtomicInteger failed = new AtomicInteger();
            List<Thread> clients = new ArrayList<>();
            for (int i = 0; i < cfg.openStreams(); i++) {
                Thread t = new Thread(() -> {
                    try {
                        if (post(x.base + "/v1/chat/completions", body, true, "[DONE]", "/chat/completions", slow) != null) failed.incrementAndGet();
                    } catch (Exception e) {
                        failed.incrementAndGet();
                    }
                }, "bench-open-" + i);
                t.setDaemon(true);
                clients.add(t);
                t.start();
            }
            int peak = idle;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (clients.stream().anyMatch(Thread::isAlive) && System.nanoTime() < deadline) {
                peak = Math.max(peak, threadsOf(x.pid));
                Thread.sleep(20);
            }
            drainQueues();
            return new int[] {idle, peak, failed.get()};
        }

        void drainQueues() {
            if (stub.pending("/chat/completions") > 0 || stub.pending("/v1/messages") > 0) stub.reset();
            stub.clear();
        }

        // ---- processes ----

        interface Starter {
            Process start(int port) throws Exception;
        }

        /** Seconds from starting a process to the first 200 on /v1/models; the process is stopped after. */
        long timeStart(Starter starter) throws Exception {
            int port = freePort();
            long t0 = System.nanoTime();
            Process p = starter.start(port);
            try {
                long ready = waitReady("http://127.0.0.1:" + port, p, Duration.ofSeconds(60));
                return ready < 0 ? Long.MAX_VALUE / 4 : ready - t0;
            } finally {
                stop(p);
            }
        }

        Process startJbang(int port) throws IOException {
            return start(List.of("./jbang", "copilot-api.java", "start", "--port", String.valueOf(port), "--github-token",
                StubUpstream.VALID_GITHUB_TOKEN), processEnv());
        }

        Process start(List<String> command, Map<String, String> env) throws IOException {
            ProcessBuilder pb = new ProcessBuilder(command).redirectErrorStream(true)
                .redirectOutput(Files.createTempFile(home, "process", ".log").toFile());
            pb.environment().putAll(env);
            Process p = pb.start();
            p.getOutputStream().close();
            return p;
        }

        static void stop(Process p) {
            List<ProcessHandle> kids = p.descendants().toList();
            p.destroy();
            kids.forEach(ProcessHandle::destroy);
            try {
                if (!p.waitFor(10, TimeUnit.SECONDS)) p.destroyForcibly();
            } catch (InterruptedException e) {
                p.destroyForcibly();
            }
            kids.forEach(ProcessHandle::destroyForcibly);
        }

        /** System.nanoTime() of the first 200 on base/v1/models, polling every 10 ms; -1 on timeout or exit. */
        long waitReady(String base, Process p, Duration timeout) throws Exception {
            HttpClient c = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(2)).build();
            long end = System.nanoTime() + timeout.toNanos();
            while (System.nanoTime() < end) {
                if (p != null && !p.isAlive()) return -1;
                try {
                    HttpResponse<Void> r = c.send(HttpRequest.newBuilder(URI.create(base + "/v1/models")).timeout(Duration.ofSeconds(5)).build(),
                        HttpResponse.BodyHandlers.discarding());
                    if (r.statusCode() == 200) return System.nanoTime();
                } catch (IOException notYet) {
                    // not listening yet
                }
                Thread.sleep(10);
            }
            return -1;
        }

        /** The class path jbang built for copilot-api.java, or null. */
        static String classpath() {
            try {
                Process p = new ProcessBuilder("./jbang", "info", "classpath", "copilot-api.java").redirectError(ProcessBuilder.Redirect.DISCARD).start();
                String outText = new String(p.getInputStream().readAllBytes(), UTF_8).trim();
                p.waitFor(60, TimeUnit.SECONDS);
                String[] lines = outText.split("\n");
                return lines.length == 0 || lines[lines.length - 1].isBlank() ? null : lines[lines.length - 1].trim();
            } catch (Exception e) {
                return null;
            }
        }

        /** The script's //JAVA_OPTIONS and its //CDS archive as jbang passes them, so that "JVM alone" runs the same JVM. */
        static List<String> jbangRuntimeOptions() {
            try {
                Process p = new ProcessBuilder("./jbang", "info", "tools", "copilot-api.java").redirectError(ProcessBuilder.Redirect.DISCARD).start();
                JsonNode info = JSON.readTree(p.getInputStream());
                p.waitFor(60, TimeUnit.SECONDS);
                List<String> options = new ArrayList<>();
                info.path("runtimeOptions").forEach(o -> options.add(o.asText()));
                String jsa = info.path("applicationJsa").asText("");
                if (!jsa.isEmpty() && Files.exists(Path.of(jsa))) options.add("-XX:SharedArchiveFile=" + jsa);
                return options;
            } catch (Exception e) {
                return List.of();
            }
        }

        static int freePort() throws IOException {
            try (java.net.ServerSocket s = new java.net.ServerSocket(0)) {
                return s.getLocalPort();
            }
        }

        static String describe(long pid) {
            try {
                String exe = Path.of("/proc/" + pid + "/exe").toRealPath().toString();
                String cmd = Files.readString(Path.of("/proc/" + pid + "/cmdline")).replace('\0', ' ').trim();
                return exe + " (" + (cmd.length() > 100 ? cmd.substring(0, 100) + "..." : cmd) + ")";
            } catch (IOException | RuntimeException e) {
                return "(no /proc entry)";
            }
        }

        /** The pid owning the listening TCP socket on {@code port} (Linux /proc), or -1. */
        static long pidListeningOn(int port) {
            String hex = String.format(Locale.ROOT, ":%04X", port);
            java.util.Set<String> inodes = new java.util.HashSet<>();
            for (String f : List.of("/proc/net/tcp", "/proc/net/tcp6")) {
                try {
                    for (String l : Files.readAllLines(Path.of(f))) {
                        String[] p = l.trim().split("\\s+");
                        if (p.length > 9 && p[1].endsWith(hex) && p[3].equals("0A")) inodes.add("socket:[" + p[9] + "]");
                    }
                } catch (IOException ignored) {
                    // no IPv6, say
                }
            }
            if (inodes.isEmpty()) return -1;
            try (Stream<Path> procs = Files.list(Path.of("/proc"))) {
                for (Path proc : (Iterable<Path>) procs::iterator) {
                    if (!proc.getFileName().toString().matches("\\d+")) continue;
                    try (Stream<Path> fds = Files.list(proc.resolve("fd"))) {
                        for (Path fd : (Iterable<Path>) fds::iterator) {
                            try {
                                if (inodes.contains(Files.readSymbolicLink(fd).toString())) return Long.parseLong(proc.getFileName().toString());
                            } catch (IOException ignored) {
                                // closed meanwhile
                            }
                        }
                    } catch (IOException | RuntimeException ignored) {
                        // not ours to read, or gone
                    }
                }
            } catch (IOException ignored) {
                // no /proc
            }
            return -1;
        }

        static Map<String, String> status(long pid) {
            Map<String, String> m = new HashMap<>();
            try {
                for (String l : Files.readAllLines(Path.of("/proc/" + pid + "/status"))) {
                    int c = l.indexOf(':');
                    if (c > 0) m.put(l.substring(0, c), l.substring(c + 1).trim());
                }
            } catch (IOException ignored) {
                // gone
            }
            return m;
        }

        /** USER_HZ of /proc/PID/stat; 100 on every Linux this runs on. */
        static final double CLOCK_TICKS = 100;

        /** utime + stime of a process from /proc/PID/stat, in clock ticks; -1 when unreadable. */
        static long cpuTicks(long pid) {
            try {
                String st = Files.readString(Path.of("/proc/" + pid + "/stat"));
                String[] f = st.substring(st.lastIndexOf(')') + 2).split(" ");
                return Long.parseLong(f[11]) + Long.parseLong(f[12]);
            } catch (IOException | RuntimeException e) {
                return -1;
            }
        }

        static int threadsOf(long pid) {
            String t = status(pid).get("Threads");
            return t == null ? -1 : Integer.parseInt(t);
        }

        static long kbOf(String v) {
            return v == null ? -1 : Long.parseLong(v.replace("kB", "").trim());
        }

        /** Claude Code's request from the fixtures, model claude-sonnet-4.5, its history padded to about {@code bytes}. */
        static String claudeCodeRequest(int bytes, boolean withBillingHeader) throws IOException {
            Path p = null;
            for (Path d = Path.of("").toAbsolutePath(); d != null; d = d.getParent()) {
                Path f = d.resolve("tests/fixtures/anthropic/claude-code-request.json");
                if (Files.exists(f)) {
                    p = f;
                    break;
                }
            }
            if (p == null) throw new IOException("tests/fixtures/anthropic/claude-code-request.json not found");
            ObjectNode root = (ObjectNode) JSON.readTree(Files.readString(p));
            root.put("model", "claude-sonnet-4.5");
            if (!withBillingHeader && root.get("system") instanceof ArrayNode system) {
                for (int i = system.size() - 1; i >= 0; i--) {
                    if (system.get(i).path("text").asText().startsWith("x-anthropic-billing-header:")) system.remove(i);
                }
            }
            root.put("stream", true);
            ArrayNode messages = (ArrayNode) root.get("messages");
            JsonNode lastUser = messages.remove(messages.size() - 1);
            StringBuilder text = new StringBuilder();
            for (int i = 0; text.length() < 1000; i++) text.append(WORDS[i % WORDS.length]);
            int turn = 0;
            while (root.toString().length() + lastUser.toString().length() < bytes) {
                ObjectNode m = messages.addObject().put("role", turn % 2 == 0 ? "user" : "assistant");
                m.putArray("content").addObject().put("type", "text").put("text", text.toString());
                turn++;
            }
            if (turn % 2 == 1) messages.addObject().put("role", "assistant").putArray("content").addObject().put("type", "text").put("text", "OK.");
            messages.add(lastUser);
            return root.toString();
        }

        @Override
        public void close() {
            clearer.interrupt();
            if (cp != null && cp.process != null) stop(cp.process);
            stub.close();
        }
    }

    // ==== Payloads ====

    static final String[] WORDS = {" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog", ",", " and", " then", " sleeps", "."};

    /** A Copilot-shaped GPT stream: the empty-choices filter chunk, n content deltas, finish, usage, [DONE]. */
    static List<String> chatChunks(int n, String model) {
        List<String> out = new ArrayList<>(n + 4);
        out.add("{\"choices\":[],\"created\":0,\"id\":\"\",\"prompt_filter_results\":[{\"content_filter_results\":{},\"prompt_index\":0}]}");
        String tail = "\"created\":1760000000,\"id\":\"chatcmpl-bench\",\"model\":\"" + model + "\",\"system_fingerprint\":\"fp_bench\"}";
        for (int i = 0; i < n; i++) {
            String delta = (i == 0 ? "{\"role\":\"assistant\",\"content\":" : "{\"content\":") + "\"" + WORDS[i % WORDS.length] + "\"}";
            out.add("{\"choices\":[{\"index\":0,\"delta\":" + delta + ",\"finish_reason\":null}]," + tail);
        }
        out.add("{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]," + tail);
        out.add("{\"choices\":[],\"usage\":{\"completion_tokens\":" + n + ",\"prompt_tokens\":9,\"total_tokens\":" + (n + 9) + "}," + tail);
        out.add("[DONE]");
        return out;
    }

    /** An Anthropic Messages stream with n text deltas, framed as "event: X\ndata: {...}\n\n". */
    static List<String> anthropicEvents(int n, String model) {
        List<String> out = new ArrayList<>(n + 6);
        out.add(event("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\","
            + "\"model\":\"" + model + "\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":9,"
            + "\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}"));
        out.add(event("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}"));
        for (int i = 0; i < n; i++) {
            out.add(event("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\""
                + WORDS[i % WORDS.length] + "\"}}"));
        }
        out.add(event("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}"));
        out.add(event("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
            + "\"usage\":{\"output_tokens\":" + n + "}}"));
        out.add(event("message_stop", "{\"type\":\"message_stop\"}"));
        return out;
    }

    static String event(String name, String data) {
        return "event: " + name + "\ndata: " + data + "\n\n";
    }

    /** A chat request of about {@code bytes}: a long conversation, as agents send. */
    static String largeChatBody(int bytes) {
        ObjectNode root = JSON.createObjectNode();
        root.put("model", "gpt-4.1");
        ArrayNode messages = root.putArray("messages");
        messages.addObject().put("role", "system").put("content", "You are a helpful assistant.");
        StringBuilder text = new StringBuilder();
        for (int i = 0; text.length() < 4000; i++) text.append(WORDS[i % WORDS.length]);
        String chunk = text.toString();
        int turn = 0;
        while (root.toString().length() < bytes) {
            messages.addObject().put("role", turn % 2 == 0 ? "user" : "assistant").put("content", chunk);
            turn++;
        }
        messages.addObject().put("role", "user").put("content", "Hi");
        return root.toString();
    }

    // ==== Small utilities ====

    /** Bytes allocated so far by all threads (JDK 21+: including finished ones), or -1. */
    static long allocatedBytes() {
        if (!(ManagementFactory.getThreadMXBean() instanceof com.sun.management.ThreadMXBean t) || !t.isThreadAllocatedMemorySupported()) {
            return -1;
        }
        if (!t.isThreadAllocatedMemoryEnabled()) t.setThreadAllocatedMemoryEnabled(true);
        try {
            Method total = com.sun.management.ThreadMXBean.class.getMethod("getTotalThreadAllocatedBytes");
            long v = (long) total.invoke(t);
            if (v >= 0) return v;
        } catch (ReflectiveOperationException | RuntimeException ignored) {
            // JDK 17: sum over the live threads below (pooled threads stay alive across a measurement).
        }
        long sum = 0;
        for (long v : t.getThreadAllocatedBytes(t.getAllThreadIds())) if (v > 0) sum += v;
        return sum;
    }

    /** Linux's count of connections dropped because a listen queue was full (whole system), or -1 elsewhere. */
    static long listenOverflows() {
        try {
            List<String> lines = Files.readAllLines(Path.of("/proc/net/netstat"));
            for (int i = 0; i + 1 < lines.size(); i++) {
                if (!lines.get(i).startsWith("TcpExt:") || !lines.get(i + 1).startsWith("TcpExt:")) continue;
                String[] names = lines.get(i).trim().split("\\s+");
                String[] values = lines.get(i + 1).trim().split("\\s+");
                for (int j = 1; j < names.length && j < values.length; j++) {
                    if (names[j].equals("ListenOverflows")) return Long.parseLong(values[j]);
                }
            }
        } catch (IOException | RuntimeException ignored) {
            // Not Linux, or no /proc: the count is simply not reported.
        }
        return -1;
    }

    static double median(long[] values) {
        long[] s = values.clone();
        Arrays.sort(s);
        int n = s.length;
        return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2.0;
    }

    static double round(double v) {
        return Double.isNaN(v) ? -1 : Math.round(v * 1000) / 1000.0;
    }

    static String kb(double bytes) {
        return bytes < 0 ? "n/a" : String.format(Locale.ROOT, "%.1f KB", bytes / 1024);
    }

    static String shorten(String s) {
        String one = s.replaceAll("\\s+", " ").trim();
        return one.length() > 160 ? one.substring(0, 160) + "..." : one;
    }

    /** Counts the bytes read through it. */
    static final class CountingStream extends FilterInputStream {
        long count;

        CountingStream(InputStream in) {
            super(in);
        }

        @Override
        public int read() throws IOException {
            int b = super.read();
            if (b >= 0) count++;
            return b;
        }

        @Override
        public int read(byte[] buf, int off, int len) throws IOException {
            int n = super.read(buf, off, len);
            if (n > 0) count += n;
            return n;
        }
    }
}
