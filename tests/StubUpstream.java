///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DEPS com.fasterxml.jackson.core:jackson-databind:2.20.1
//COMPILE_OPTIONS -encoding UTF-8

package copilotapi;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.URI;
import java.net.URLDecoder;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentLinkedDeque;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * An in-process fake of GitHub and the Copilot API for copilot-api's tests, also runnable on its own
 * ({@code jbang tests/StubUpstream.java --port 8099}) for manual end-to-end checks.
 *
 * <p>One HTTP server on 127.0.0.1 with three prefixes: {@code /gh} (GitHub web, device flow), {@code /api}
 * (GitHub API: token exchange, usage) and {@code /copilot} (Copilot API). Every request is recorded. Copilot
 * calls pass the auth, editor-version and vision checks, then play a scripted {@link Reply} queued for their
 * path (FIFO), else a small deterministic default that reproduces Copilot's quirks (split choices for Claude,
 * tool-call index from 1, an empty-choices first chunk, no role in Claude deltas, reasoning fields).
 *
 * <p>Map of this file (search for "====" to print the outline):
 * 1. lifecycle and URLs · 2. knobs · 3. scripted replies and recording · 4. dispatch and playing replies ·
 * 5. GitHub routes · 6. Copilot checks and routes · 7. default answers (chat, responses, messages,
 * embeddings) · 8. catalog and usage · 9. Reply and Recorded · 10. forward proxy · 11. small utilities · main.
 */
final class StubUpstream implements AutoCloseable {

    static final String VALID_GITHUB_TOKEN = "ghu_stubGithubToken0123456789";
    static final String CLIENT_ID = "Iv1.b507a08c87ecfe98";
    static final String DEVICE_CODE = "3584d83530557fdd1f46af8289938c8ef79f9dc5";
    static final String USER_CODE = "WDJB-MJHT";
    static final String DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";
    static final String LOGIN = "stub-user";
    /** reasoning_opaque / thinking signature / encrypted_content of default answers (base64 of "stub-reasoning-signature"). */
    static final String REASONING_SIGNATURE = "c3R1Yi1yZWFzb25pbmctc2lnbmF0dXJl";
    static final ObjectMapper JSON = new ObjectMapper();

    // ==== 1. Lifecycle and URLs ====

    private final HttpServer server;
    private final ExecutorService executor;
    private final String base;

    private StubUpstream(int port) throws IOException {
        InetAddress loopback = InetAddress.getByName("127.0.0.1");
        server = HttpServer.create(new InetSocketAddress(loopback, port), 64);
        executor = Executors.newCachedThreadPool(daemonThreads("stub-upstream"));
        server.setExecutor(executor);
        server.createContext("/", this::handle);
        base = "http://127.0.0.1:" + server.getAddress().getPort();
        reset();
        server.start();
    }

    /** Starts a stub on a free port. */
    static StubUpstream start() throws IOException {
        return start(0);
    }

    /** Starts a stub on {@code port} (0: a free one). */
    static StubUpstream start(int port) throws IOException {
        return new StubUpstream(port);
    }

    int port() {
        return server.getAddress().getPort();
    }

    /** http://127.0.0.1:PORT, without a trailing slash. */
    String baseUrl() {
        return base;
    }

    String githubUrl() {
        return base + "/gh";
    }

    String githubApiUrl() {
        return base + "/api";
    }

    String copilotUrl() {
        return base + "/copilot";
    }

    /** COPILOT_API_GITHUB_URL, COPILOT_API_GITHUB_API_URL and COPILOT_API_COPILOT_URL pointing at this stub. */
    Map<String, String> env() {
        Map<String, String> env = new LinkedHashMap<>();
        env.put("COPILOT_API_GITHUB_URL", githubUrl());
        env.put("COPILOT_API_GITHUB_API_URL", githubApiUrl());
        env.put("COPILOT_API_COPILOT_URL", copilotUrl());
        return Collections.unmodifiableMap(env);
    }

    /** Stops at once; streams in flight are broken off. */
    @Override
    public void close() {
        server.stop(0);
        executor.shutdownNow();
    }

    // ==== 2. Knobs (each returns this; volatile because handler threads read them) ====

    private volatile int deviceInterval;
    private volatile Integer slowDownInterval;
    private final Deque<String> devicePolls = new ConcurrentLinkedDeque<>();
    private volatile int tokenExchangeStatus;
    private volatile String tokenExchangeRetryAfter;
    private volatile boolean refuseCopilotTokens;
    private volatile long copilotTokenLifetimeSeconds;
    private volatile long refreshInSeconds;
    private volatile String endpointsApi;
    private volatile int cachedTokens;
    private volatile boolean promptCache;
    private volatile boolean reportsCopilotUsage = true;
    private volatile long streamDelayMs;
    private volatile Reply catalogFault;
    private volatile boolean verbose;

    private final ArrayNode models = JSON.createArrayNode();
    private final ObjectNode usage = JSON.createObjectNode();

    /** The {@code interval} of the device code answer, in seconds (default 0 so tests do not wait). */
    StubUpstream deviceInterval(int seconds) {
        deviceInterval = seconds;
        return this;
    }

    /** The {@code interval} carried by slow_down answers; negative: leave it out. Default: same as deviceInterval. */
    StubUpstream slowDownInterval(int seconds) {
        slowDownInterval = seconds;
        return this;
    }

    /**
     * Script of outcomes for the next polls of the access-token endpoint, one per poll, replacing any earlier
     * script: "ok", "ok:TOKEN" (answers TOKEN instead of {@link #VALID_GITHUB_TOKEN}), "authorization_pending",
     * "slow_down", "expired_token", "access_denied" or any other OAuth error code. Exhausted script: "ok".
     */
    StubUpstream devicePolls(String... outcomes) {
        devicePolls.clear();
        devicePolls.addAll(List.of(outcomes));
        return this;
    }

    /** Forces the token exchange to answer this status (403: no Copilot seat); 0 or 200 restores normal answers. */
    StubUpstream tokenExchangeStatus(int status) {
        return tokenExchangeStatus(status, null);
    }

    /** As above, with a {@code retry-after} header on the forced answers (GitHub's rate limits may carry one); null: none. */
    StubUpstream tokenExchangeStatus(int status, String retryAfter) {
        tokenExchangeStatus = status;
        tokenExchangeRetryAfter = retryAfter;
        return this;
    }

    /** While on, Copilot refuses every token, old or new (401 "unauthorized: token expired"): an auth outage. */
    StubUpstream refuseCopilotTokens(boolean on) {
        refuseCopilotTokens = on;
        return this;
    }

    /** Lifetime of newly issued Copilot tokens (expires_at = now + this; default 1800 s). Enforced by the stub. */
    StubUpstream copilotTokenLifetime(Duration lifetime) {
        copilotTokenLifetimeSeconds = lifetime.toSeconds();
        return this;
    }

    /** The refresh_in of newly issued Copilot tokens, in seconds (default 1500). */
    StubUpstream refreshIn(long seconds) {
        refreshInSeconds = seconds;
        return this;
    }

    /** The endpoints.api of the token exchange (default: {@link #copilotUrl()}); null restores the default. */
    StubUpstream endpointsApi(String url) {
        endpointsApi = url;
        return this;
    }

    /** prompt_tokens_details.cached_tokens (and Anthropic cache_read_input_tokens) of default answers (default 0). */
    StubUpstream cachedTokens(int tokens) {
        cachedTokens = tokens;
        return this;
    }

    /**
     * While on, default answers report cached input tokens for the prefix a body shares with an earlier body sent to
     * the same endpoint and model (see "Prompt cache" in section 7 for the rule); the cachedTokens knob, when larger,
     * still wins. Off by default, so that tests that expect nothing cached need not care how long their bodies are.
     */
    StubUpstream promptCache(boolean on) {
        promptCache = on;
        return this;
    }

    /** Usage-based accounts: whether answers carry copilot_usage (default true); without it copilot-api estimates. */
    StubUpstream reportsCopilotUsage(boolean on) {
        reportsCopilotUsage = on;
        return this;
    }

    private boolean reportsCost() {
        return accountKind == AccountKind.USAGE_BASED && reportsCopilotUsage;
    }

    /**
     * While set, every GET /models (whoever asks, before the token checks) is answered with this reply instead of the
     * catalog: a Copilot whose model list is down (5xx), hangs (a delayed reply), refuses (401, 403, 429) or answers
     * the billing notice. Unlike a queued reply it lasts until cleared; null (the default, and after reset()) clears it.
     */
    StubUpstream catalogFault(Reply fault) {
        catalogFault = fault;
        return this;
    }

    /** Pause between the events of default (unscripted) streams (default 0). */
    StubUpstream streamDelayMs(long ms) {
        streamDelayMs = ms;
        return this;
    }

    private volatile int cyberPolicyFailures;

    /**
     * Adds the model families of the mid-2026 catalog (WIRE.md "Model churn") to the live catalog: Claude Opus 4.7,
     * Opus 4.8 (+ -fast), Opus 5, Sonnet 5, the Anthropic family "Fable" (5, 5.1), GPT-5.6 and GPT-6 names served on
     * /responses only, a Gemini 3.1 Flash. Opus 4.8, Sonnet 5 and GPT-6 Sol list a long-context tier, read by
     * copilot-api from {@code capabilities.limits.long_context} (the field name is not known; see LONG_TIER).
     * reset() goes back to the early-2026 catalog.
     */
    StubUpstream mid2026Models() {
        synchronized (models) {
            models.addAll(mid2026Catalog());
        }
        return this;
    }

    /**
     * Usage-based accounts: one model's token prices (credits per million input and output tokens; cached input at a
     * tenth), for tests that need the catalog's models to differ in price. Call after accountKind(USAGE_BASED).
     */
    StubUpstream tokenPrices(String id, double input, double output) {
        synchronized (models) {
            for (JsonNode m : models) {
                if (!m.path("id").asText().equals(id)) continue;
                ObjectNode prices = (ObjectNode) m.path("billing").path("token_prices");
                prices.put("input_price", input);
                prices.put("cache_price", input / 10);
                prices.put("output_price", output);
            }
        }
        return this;
    }

    /** The next {@code n} calls to /responses fail with a 400 marked cyber_policy (Copilot's occasional false alarm). */
    StubUpstream cyberPolicyFailures(int n) {
        cyberPolicyFailures = n;
        return this;
    }

    private volatile int cyberPolicyFailedResponses;

    /**
     * The next {@code n} calls to /responses answer 200 with a response whose status is failed and whose error is
     * marked cyber_policy (a stream: response.created, response.in_progress, response.failed).
     */
    StubUpstream cyberPolicyFailedResponses(int n) {
        cyberPolicyFailedResponses = n;
        return this;
    }

    /** Log one line per request to stderr. */
    StubUpstream verbose(boolean on) {
        verbose = on;
        return this;
    }

    // ---- Account kinds: Copilot of early 2026 (legacy) and since mid-2026 (usage-based billing) ----

    /** legacy: request-based billing, the catalog for any identity; usageBased: AI Credits and the mid-2026 rules. */
    enum AccountKind { LEGACY, USAGE_BASED }

    /** What GET /models answers a conversation identity on a usage-based account (a JSON string, status 200). */
    static final String BILLING_NOTICE = "Your billing plan has changed to usage-based billing and model multipliers no longer apply. "
        + "Please update your client to the latest version to see the new billing information.";
    static final String INVALID_INITIATOR = "bad request: error: invalid initiator";
    static final String CLI_INTEGRATION_ID = "copilot-developer-cli";

    private volatile AccountKind accountKind = AccountKind.LEGACY;
    private volatile boolean modelAccessGetsNotice;
    private volatile boolean checkInitiator;
    private volatile String refusedEditorVersion;
    private final Map<String, String> answerHeaders = new ConcurrentHashMap<>();

    /**
     * The account's kind. USAGE_BASED: GET /models answers the billing notice (a JSON string) unless asked with the
     * model-access identity (or the GitHub token with copilot-integration-id copilot-developer-cli); the catalog carries
     * billing.token_prices, supports.web_search, reasoning-effort values and a long-context tier; the usage report says
     * token_based_billing; answers carry copilot_usage and the x-usage-ratelimit-* / x-quota-snapshot-* headers; and
     * the invalid-initiator rule is on. LEGACY (the default) restores the early-2026 behaviour of all of these.
     */
    StubUpstream accountKind(AccountKind kind) {
        accountKind = kind;
        boolean usageBased = kind == AccountKind.USAGE_BASED;
        checkInitiator = usageBased;
        answerHeaders.clear();
        if (usageBased) {
            String reset = java.time.Instant.now().plusSeconds(2 * 3600).truncatedTo(java.time.temporal.ChronoUnit.SECONDS).toString();
            String weekReset = java.time.Instant.now().plusSeconds(4 * 86400).truncatedTo(java.time.temporal.ChronoUnit.SECONDS).toString();
            answerHeaders.put("x-usage-ratelimit-session", quotaHeader(100, 88, reset));
            answerHeaders.put("x-usage-ratelimit-weekly", quotaHeader(100, 97, weekReset));
            answerHeaders.put("x-quota-snapshot-premium_interactions", quotaHeader(300, 60, "2026-12-01T00:00:00Z"));
            answerHeaders.put("x-quota-snapshot-chat", quotaHeader(-1, 100, "2026-12-01T00:00:00Z"));
        }
        synchronized (models) {
            for (JsonNode m : models) {
                if (usageBased) usageBasedFields((ObjectNode) m);
                else legacyFields((ObjectNode) m);
            }
        }
        synchronized (usage) {
            if (usageBased) {
                usage.put("token_based_billing", true);
                usage.put("quota_reset_date_utc", "2026-12-01T00:00:00.000Z");
                usage.putObject("limited_user_quotas");
            } else {
                usage.remove(List.of("token_based_billing", "limited_user_quotas"));
            }
        }
        return this;
    }

    AccountKind accountKind() {
        return accountKind;
    }

    /** Usage-based accounts: the model-access identity gets the billing notice too (only the GitHub-token fallback works). */
    StubUpstream modelAccessGetsNotice(boolean on) {
        modelAccessGetsNotice = on;
        return this;
    }

    /**
     * The invalid-initiator rule (on for usage-based accounts): x-initiator agent with a person's text last is a 400
     * "bad request: error: invalid initiator": on /chat/completions a last message of role user, on /responses a string
     * input or a last user message item, on /v1/messages a last user message without any tool_result block.
     */
    StubUpstream checkInitiator(boolean on) {
        checkInitiator = on;
        return this;
    }

    /** Every Copilot call whose editor-version header equals this (e.g. "vscode/1.120.0") is refused with 466; null: none. */
    StubUpstream refuseEditorVersion(String editorVersion) {
        refusedEditorVersion = editorVersion;
        return this;
    }

    /** A header put on every successful Copilot answer (e.g. x-usage-ratelimit-session); a null value removes it. */
    StubUpstream answerHeader(String name, String value) {
        if (value == null) answerHeaders.remove(name);
        else answerHeaders.put(name, value);
        return this;
    }

    /** The x-usage-ratelimit-* / x-quota-snapshot-* grammar: ent=...&ov=...&ovPerm=...&rem=PERCENT&rst=ISO&totRem=... */
    static String quotaHeader(int entitlement, double remainingPercent, String reset) {
        return "ent=" + entitlement + "&ov=0.0&ovPerm=false&rem=" + remainingPercent + "&rst=" + reset + "&totRem=-1";
    }

    /**
     * The model catalog served by GET /copilot/models and used to validate model ids, as a live list: change it
     * while no request is in flight (or synchronize on it).
     */
    ArrayNode models() {
        return models;
    }

    /** The body of GET /api/copilot_internal/user, live (same rule as {@link #models()}). */
    ObjectNode usage() {
        return usage;
    }

    /**
     * Back to the state of a new stub: recordings, queued replies, knobs, catalog and usage (in place: the
     * nodes returned by models() and usage() stay valid). Copilot tokens issued so far keep their validity.
     */
    StubUpstream reset() {
        clear();
        scripted.clear();
        devicePolls.clear();
        deviceInterval = 0;
        slowDownInterval = null;
        tokenExchangeStatus = 0;
        tokenExchangeRetryAfter = null;
        refuseCopilotTokens = false;
        copilotTokenLifetimeSeconds = 1800;
        refreshInSeconds = 1500;
        endpointsApi = null;
        cachedTokens = 0;
        promptCache = false;
        promptsSeen.clear();
        reportsCopilotUsage = true;
        streamDelayMs = 0;
        catalogFault = null;
        accountKind = AccountKind.LEGACY;
        modelAccessGetsNotice = false;
        checkInitiator = false;
        refusedEditorVersion = null;
        answerHeaders.clear();
        cyberPolicyFailures = 0;
        cyberPolicyFailedResponses = 0;
        synchronized (models) {
            models.removeAll();
            models.addAll(defaultModels());
        }
        synchronized (usage) {
            usage.removeAll();
            usage.setAll(defaultUsage());
        }
        return this;
    }

    // ---- Copilot tokens ----

    private final List<String> tokensIssued = new CopyOnWriteArrayList<>();
    private final Map<String, Long> tokenExpiryMillis = new ConcurrentHashMap<>();
    private final Set<String> revokedTokens = ConcurrentHashMap.newKeySet();
    /** Ids differ between stubs too, as Copilot's do: a store that outlives one stub must not see the next one reuse its ids. */
    private final AtomicInteger ids = new AtomicInteger(new java.util.Random().nextInt(1 << 20) * 1000);

    /** Every Copilot token handed out by the exchange, oldest first. */
    List<String> tokensIssued() {
        return List.copyOf(tokensIssued);
    }

    /** The newest Copilot token, or null when none was issued. */
    String latestCopilotToken() {
        List<String> all = tokensIssued();
        return all.isEmpty() ? null : all.get(all.size() - 1);
    }

    /** Every token issued so far is refused from now on (401 "unauthorized: token expired"); new ones work. */
    void expireCopilotTokens() {
        revokedTokens.addAll(tokensIssued);
    }

    // ==== 3. Scripted replies and recording ====

    private final Map<String, Deque<Reply>> scripted = new ConcurrentHashMap<>();
    private final List<Recorded> recorded = new ArrayList<>();

    /**
     * Queues a reply for the next request to {@code path}: a Copilot path without prefix ("/chat/completions",
     * "/embeddings", "/responses", "/v1/messages", "/models"), a GitHub path without prefix
     * ("/copilot_internal/v2/token", "/copilot_internal/user", "/user", "/login/...") or a full path. Copilot
     * replies play after the auth/editor/vision checks; GitHub replies replace the route entirely. FIFO per path.
     */
    StubUpstream enqueue(String path, Reply reply) {
        scripted.computeIfAbsent(queueKey(path), k -> new ConcurrentLinkedDeque<>()).add(reply);
        return this;
    }

    /** How many queued replies for {@code path} were not played yet. */
    int pending(String path) {
        Deque<Reply> q = scripted.get(queueKey(path));
        return q == null ? 0 : q.size();
    }

    /** Every request since the last clear(), in arrival order. */
    List<Recorded> requests() {
        synchronized (recorded) {
            return List.copyOf(recorded);
        }
    }

    /** The latest request to {@code path} (with or without the /gh, /api, /copilot prefix), or null. */
    Recorded last(String path) {
        synchronized (recorded) {
            for (int i = recorded.size() - 1; i >= 0; i--) {
                if (recorded.get(i).matches(path)) return recorded.get(i);
            }
            return null;
        }
    }

    /** How many requests to {@code path} since the last clear(). */
    int count(String path) {
        synchronized (recorded) {
            return (int) recorded.stream().filter(r -> r.matches(path)).count();
        }
    }

    /** Forgets recorded requests (queued replies and knobs stay; see reset()). */
    void clear() {
        synchronized (recorded) {
            recorded.clear();
        }
    }

    /** Waits until at least {@code n} requests to {@code path} were recorded and returns the n-th; AssertionError on timeout. */
    Recorded await(String path, int n, Duration timeout) throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        synchronized (recorded) {
            while (true) {
                List<Recorded> hits = recorded.stream().filter(r -> r.matches(path)).toList();
                if (hits.size() >= n) return hits.get(n - 1);
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    throw new AssertionError("expected " + n + " request(s) to " + path + " within " + timeout + ", saw " + hits.size());
                }
                TimeUnit.NANOSECONDS.timedWait(recorded, left);
            }
        }
    }

    /** Waits for the first request to {@code path}. */
    Recorded await(String path, Duration timeout) throws InterruptedException {
        return await(path, 1, timeout);
    }

    /** True once writing a reply to the client of {@code r} failed (it disconnected); false on timeout. */
    boolean awaitClientGone(Recorded r, Duration timeout) throws InterruptedException {
        return r.awaitClientGone(timeout);
    }

    private static String queueKey(String path) {
        String p = stripQuery(path);
        if (!p.startsWith("/")) throw new IllegalArgumentException("path must start with '/': " + path);
        if (isPrefixed(p)) return p;
        if (p.startsWith("/copilot_internal/") || p.equals("/user")) return "/api" + p;
        if (p.startsWith("/login/")) return "/gh" + p;
        return "/copilot" + p;
    }

    private static boolean isPrefixed(String p) {
        return p.startsWith("/copilot/") || p.startsWith("/gh/") || p.startsWith("/api/");
    }

    private Reply dequeue(String path) {
        Deque<Reply> q = scripted.get(path);
        return q == null ? null : q.poll();
    }

    private Recorded record(HttpExchange ex) throws IOException {
        Map<String, String> headers = new TreeMap<>();
        for (Map.Entry<String, List<String>> h : ex.getRequestHeaders().entrySet()) {
            List<String> values = h.getValue();
            headers.put(h.getKey().toLowerCase(Locale.ROOT), values.isEmpty() ? "" : values.get(values.size() - 1));
        }
        String body = new String(ex.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
        URI uri = ex.getRequestURI();
        Recorded r = new Recorded(ex.getRequestMethod(), uri.getRawPath(), uri.getRawQuery(), headers, body);
        synchronized (recorded) {
            recorded.add(r);
            recorded.notifyAll();
        }
        return r;
    }

    // ==== 4. Dispatch and playing replies ====

    /** Thrown out of the handler so that HttpServer drops the socket without the terminating chunk. */
    private static final class CutConnection extends IOException {
        private static final long serialVersionUID = 1L;

        CutConnection() {
            super("stub: connection cut on purpose");
        }

        @Override
        public synchronized Throwable fillInStackTrace() {
            return this;
        }
    }

    private void handle(HttpExchange ex) throws IOException {
        Recorded rec = null;
        boolean cut = false;
        try {
            rec = record(ex);
            route(ex, rec);
        } catch (CutConnection c) {
            cut = true;
            throw c;
        } catch (IOException e) {
            // Reading the request or writing the reply failed: the client went away.
            if (rec != null) rec.markClientGone();
        } catch (InterruptedException e) {
            // The stub is closing; the exchange is dropped below.
            Thread.currentThread().interrupt();
        } catch (RuntimeException e) {
            // A bug in the stub: make it visible to the test instead of hanging the client.
            System.err.println("StubUpstream: error answering " + ex.getRequestURI() + ": " + e);
            e.printStackTrace();
            if (rec != null && rec.status() == 0) answerInternalError(ex, rec, e);
        } finally {
            if (!cut) ex.close();
            if (verbose && rec != null) {
                System.err.printf("stub: %s %s -> %s%s%n", rec.method(), rec.path(), rec.status(), cut ? " (cut)" : "");
            }
        }
    }

    private void answerInternalError(HttpExchange ex, Recorded rec, RuntimeException e) {
        try {
            play(ex, rec, Reply.json(500, errorBody("stub failure: " + e, "server_error", null, null)));
        } catch (IOException | InterruptedException ignored) {
            // The client is gone as well; nothing more to tell it.
        }
    }

    private void route(HttpExchange ex, Recorded rec) throws IOException, InterruptedException {
        String path = rec.path();
        Reply fault = catalogFault;
        if (fault != null && rec.method().equals("GET") && path.equals("/copilot/models")) {
            play(ex, rec, fault);
        } else if (path.startsWith("/copilot/")) {
            Reply refusal = copilotChecks(rec);
            Reply scriptedReply = refusal == null ? dequeue(path) : null;
            Reply reply = refusal != null ? refusal : scriptedReply != null ? scriptedReply : copilotDefault(rec, path.substring(8));
            if (reply.status() < 400) {
                for (Map.Entry<String, String> h : answerHeaders.entrySet()) reply = reply.header(h.getKey(), h.getValue());
            }
            play(ex, rec, reply);
        } else if (path.startsWith("/gh/") || path.startsWith("/api/")) {
            Reply scriptedReply = dequeue(path);
            play(ex, rec, scriptedReply != null ? scriptedReply : github(rec));
        } else {
            play(ex, rec, notFound(path));
        }
    }

    private void play(HttpExchange ex, Recorded rec, Reply r) throws IOException, InterruptedException {
        switch (r.kind()) {
            case JSON -> {
                if (r.delayMs() > 0) Thread.sleep(r.delayMs());
                byte[] bytes = r.body().getBytes(StandardCharsets.UTF_8);
                Headers h = ex.getResponseHeaders();
                h.set("Content-Type", "application/json");
                r.headers().forEach(h::set);
                rec.status(r.status());
                boolean noBody = bytes.length == 0 || r.status() == 204 || r.status() == 304;
                ex.sendResponseHeaders(r.status(), noBody ? -1 : bytes.length);
                if (!noBody) ex.getResponseBody().write(bytes);
            }
            case HANG -> {
                startStream(ex, rec, r);
                Thread.sleep(r.hangMs());
            }
            case FLOOD -> flood(ex, rec, r);
            case SSE, RAW_SSE -> {
                startStream(ex, rec, r);
                OutputStream out = ex.getResponseBody();
                List<String> events = r.wireEvents();
                int limit = r.cutAfter() >= 0 ? Math.min(r.cutAfter(), events.size()) : events.size();
                for (int i = 0; i < limit; i++) {
                    if (i > 0 && r.delayMs() > 0) Thread.sleep(r.delayMs());
                    out.write(events.get(i).getBytes(StandardCharsets.UTF_8));
                    out.flush();
                }
                if (r.cutAfter() >= 0) throw new CutConnection();
            }
        }
    }

    /** Chat chunks of about 1 KB each, as fast as the client takes them, until {@code hangMs} bytes were sent; no [DONE]. */
    private static void flood(HttpExchange ex, Recorded rec, Reply r) throws IOException {
        startStream(ex, rec, r);
        OutputStream out = ex.getResponseBody();
        byte[] chunk = ("data: {\"id\":\"chatcmpl-flood\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-4.1\","
            + "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"" + "x".repeat(900) + "\"}}]}\n\n")
            .getBytes(StandardCharsets.UTF_8);
        while (rec.bytesSent() < r.hangMs()) {
            out.write(chunk);
            out.flush();
            rec.sent(chunk.length);
        }
    }

    private static void startStream(HttpExchange ex, Recorded rec, Reply r) throws IOException {
        Headers h = ex.getResponseHeaders();
        h.set("Content-Type", "text/event-stream");
        h.set("Cache-Control", "no-cache");
        r.headers().forEach(h::set);
        rec.status(r.status());
        ex.sendResponseHeaders(r.status(), 0);
        ex.getResponseBody().flush();
    }

    private static Reply notFound(String path) {
        return Reply.json(404, errorBody("stub: no route for " + path, "not_found", "not_found", null));
    }

    // ==== 5. GitHub routes ====

    private Reply github(Recorded rec) {
        String route = rec.method() + " " + rec.path();
        return switch (route) {
            case "POST /gh/login/device/code" -> deviceCode(rec);
            case "POST /gh/login/oauth/access_token" -> accessToken(rec);
            case "GET /api/copilot_internal/v2/token" -> tokenExchange(rec);
            case "GET /api/copilot_internal/user" -> githubRead(rec, false, snapshot(usage));
            case "GET /api/user" -> githubRead(rec, true, githubUser());
            default -> notFound(rec.path());
        };
    }

    private Reply deviceCode(Recorded rec) {
        ObjectNode o = obj();
        o.put("device_code", DEVICE_CODE);
        o.put("user_code", USER_CODE);
        o.put("verification_uri", githubUrl() + "/login/device");
        o.put("expires_in", 900);
        o.put("interval", deviceInterval);
        return githubForm(rec, o);
    }

    private Reply accessToken(Recorded rec) {
        Map<String, String> form = rec.form();
        if (!CLIENT_ID.equals(form.get("client_id"))) {
            return githubForm(rec, oauthError("incorrect_client_credentials", "The client_id and/or client_secret passed are incorrect."));
        }
        if (!DEVICE_GRANT.equals(form.get("grant_type"))) {
            return githubForm(rec, oauthError("unsupported_grant_type", "The grant type is not supported."));
        }
        if (!DEVICE_CODE.equals(form.get("device_code"))) {
            return githubForm(rec, oauthError("incorrect_device_code", "The device_code provided is not valid."));
        }
        String outcome = devicePolls.poll();
        if (outcome == null) outcome = "ok";
        if (outcome.equals("ok") || outcome.startsWith("ok:")) {
            ObjectNode o = obj();
            o.put("access_token", outcome.equals("ok") ? VALID_GITHUB_TOKEN : outcome.substring(3));
            o.put("token_type", "bearer");
            o.put("scope", "read:user");
            return githubForm(rec, o);
        }
        ObjectNode error = switch (outcome) {
            case "authorization_pending" -> oauthError(outcome, "The authorization request is still pending.");
            case "slow_down" -> oauthError(outcome, "Too many requests have been made in the same timeframe.");
            case "expired_token" -> oauthError(outcome, "The `device_code` has expired.");
            case "access_denied" -> oauthError(outcome, "The authorization request was denied.");
            default -> oauthError(outcome, "stub device-flow outcome " + outcome);
        };
        if (outcome.equals("slow_down")) {
            int interval = slowDownInterval == null ? deviceInterval : slowDownInterval;
            if (interval >= 0) error.put("interval", interval);
        }
        return githubForm(rec, error);
    }

    private static ObjectNode oauthError(String code, String description) {
        ObjectNode o = obj();
        o.put("error", code);
        o.put("error_description", description);
        o.put("error_uri", "https://docs.github.com/developers/apps/authorizing-oauth-apps#error-codes-for-the-device-flow");
        return o;
    }

    /** GitHub answers the OAuth endpoints as JSON only when asked with Accept: application/json; else form-encoded. */
    private static Reply githubForm(Recorded rec, ObjectNode o) {
        String accept = rec.header("accept");
        if (accept != null && accept.contains("application/json")) return Reply.json(200, o.toString());
        StringBuilder form = new StringBuilder();
        for (Map.Entry<String, JsonNode> e : o.properties()) {
            if (form.length() > 0) form.append('&');
            form.append(urlEncode(e.getKey())).append('=').append(urlEncode(e.getValue().asText()));
        }
        return Reply.raw(200, "application/x-www-form-urlencoded; charset=utf-8", form.toString());
    }

    /** Null when the request carries {@code Authorization: token VALID_GITHUB_TOKEN}, else GitHub's refusal. */
    private static Reply githubAuthFailure(Recorded rec, boolean acceptOtherApps) {
        String auth = rec.header("authorization");
        String token = auth != null && auth.regionMatches(true, 0, "token ", 0, 6) ? auth.substring(6).trim() : null;
        if (VALID_GITHUB_TOKEN.equals(token)) return null;
        if (token != null && token.startsWith("gho_")) {
            if (acceptOtherApps) return null;
            return Reply.json(404, "{\"message\":\"Not Found\",\"documentation_url\":\"https://docs.github.com/rest\",\"status\":\"404\"}");
        }
        return Reply.json(401, "{\"message\":\"Bad credentials\",\"documentation_url\":\"https://docs.github.com/rest\",\"status\":\"401\"}");
    }

    private Reply tokenExchange(Recorded rec) {
        Reply refusal = githubAuthFailure(rec, false);
        if (refusal != null) return refusal;
        int forced = tokenExchangeStatus;
        if (forced != 0 && forced != 200) return forcedTokenExchange(forced, tokenExchangeRetryAfter);
        long nowMillis = System.currentTimeMillis();
        long lifetime = copilotTokenLifetimeSeconds;
        long expiresAt = nowMillis / 1000 + lifetime;
        String token;
        synchronized (tokensIssued) {
            token = "tid=stub;exp=" + expiresAt + ";sku=copilot_stub;proxy-ep=proxy.stub;n=" + (tokensIssued.size() + 1);
            tokenExpiryMillis.put(token, nowMillis + lifetime * 1000);
            tokensIssued.add(token);
        }
        ObjectNode o = obj();
        o.put("annotations_enabled", true);
        o.put("chat_enabled", true);
        o.put("chat_jetbrains_enabled", true);
        o.put("code_quote_enabled", true);
        o.put("codesearch", false);
        o.put("copilotignore_enabled", false);
        ObjectNode endpoints = o.putObject("endpoints");
        endpoints.put("api", endpointsApi != null ? endpointsApi : copilotUrl());
        endpoints.put("origin-tracker", base + "/unused/origin-tracker");
        endpoints.put("proxy", base + "/unused/proxy");
        endpoints.put("telemetry", base + "/unused/telemetry");
        o.put("expires_at", expiresAt);
        o.put("individual", true);
        o.put("prompt_8k", true);
        o.put("public_suggestions", "disabled");
        o.put("refresh_in", refreshInSeconds);
        o.put("sku", "copilot_stub");
        o.put("snippy_load_test_enabled", false);
        o.put("telemetry", "disabled");
        o.put("token", token);
        o.put("tracking_id", "0123456789abcdef0123456789abcdef");
        o.put("vsc_electron_fetcher_v2", false);
        o.put("xcode", true);
        o.put("xcode_chat", false);
        return Reply.json(200, o.toString());
    }

    private static Reply forcedTokenExchange(int status, String retryAfter) {
        ObjectNode o = obj();
        if (status == 403) {
            ObjectNode details = o.putObject("error_details");
            details.put("url", "https://github.com/features/copilot");
            details.put("message", "No access to GitHub Copilot found. You are currently logged in as " + LOGIN + ".");
            details.put("title", "No access to GitHub Copilot");
            details.put("notification_id", "no_copilot_access");
            o.put("message", "Resource not accessible by integration");
        } else if (status == 429) {
            o.put("message", "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.");
        } else {
            o.put("message", "stub: token exchange forced to " + status);
        }
        o.put("documentation_url", "https://docs.github.com/rest");
        return Reply.json(status, o.toString(), retryAfter == null ? Map.of() : Map.of("retry-after", retryAfter));
    }

    /** A GitHub API read: the body for a valid token, else GitHub's refusal. */
    private static Reply githubRead(Recorded rec, boolean acceptOtherApps, JsonNode body) {
        Reply refusal = githubAuthFailure(rec, acceptOtherApps);
        return refusal != null ? refusal : Reply.json(200, body);
    }

    private static ObjectNode githubUser() {
        ObjectNode o = obj();
        o.put("login", LOGIN);
        o.put("id", 1000001);
        o.put("name", "Stub User");
        o.put("type", "User");
        return o;
    }

    // ==== 6. Copilot checks and routes ====

    /** The checks every Copilot call passes, in order: bearer token, editor-version, vision header. */
    private Reply copilotChecks(Recorded rec) {
        String auth = rec.header("authorization");
        String token = auth != null && auth.regionMatches(true, 0, "Bearer ", 0, 7) ? auth.substring(7).trim() : null;
        if (isCliCatalogCall(rec, token)) return null;
        Long expiry = token == null ? null : tokenExpiryMillis.get(token);
        if (expiry == null) return unauthorized("unauthorized: invalid token");
        if (revokedTokens.contains(token) || System.currentTimeMillis() >= expiry) return unauthorized("unauthorized: token expired");
        if (refuseCopilotTokens) return unauthorized("unauthorized: token expired");
        String editor = rec.header("editor-version");
        if (editor == null || editor.isBlank()) {
            return Reply.json(400, errorBody("missing Editor-Version header for IDE auth", "invalid_request_error", null, null));
        }
        if (editor.equals(refusedEditorVersion)) {
            return Reply.json(466, errorBody("Your editor version " + editor + " is no longer supported; please update to use Copilot.",
                null, "unsupported_editor_version", null));
        }
        JsonNode json = rec.json();
        if ("POST".equals(rec.method()) && json != null && containsImage(json)
            && !"true".equalsIgnoreCase(String.valueOf(rec.header("copilot-vision-request")).trim())) {
            return Reply.json(400, errorBody("missing required Copilot-Vision-Request header for vision requests", "invalid_request_error", null, null));
        }
        return null;
    }

    private static Reply unauthorized(String message) {
        return Reply.json(401, errorBody(message, null, "unauthorized", null));
    }

    /** True when any object at any depth has type image_url, image or input_image. */
    static boolean containsImage(JsonNode n) {
        if (n.isObject()) {
            String type = n.path("type").asText("");
            if (type.equals("image_url") || type.equals("image") || type.equals("input_image")) return true;
        }
        if (n.isContainerNode()) {
            for (JsonNode child : n) {
                if (containsImage(child)) return true;
            }
        }
        return false;
    }

    /** A usage-based account's catalog read with the GitHub token (GET /models, Bearer github token, the CLI's integration id). */
    private boolean isCliCatalogCall(Recorded rec, String token) {
        return accountKind == AccountKind.USAGE_BASED && VALID_GITHUB_TOKEN.equals(token) && rec.method().equals("GET")
            && rec.path().equals("/copilot/models") && CLI_INTEGRATION_ID.equals(rec.header("copilot-integration-id"));
    }

    /** Legacy: the catalog for anyone. Usage-based: the catalog for the model-access identity or the CLI, else the notice. */
    private Reply catalog(Recorded rec) {
        if (accountKind == AccountKind.USAGE_BASED) {
            String auth = String.valueOf(rec.header("authorization"));
            boolean cli = auth.regionMatches(true, 0, "Bearer ", 0, 7) && isCliCatalogCall(rec, auth.substring(7).trim());
            boolean modelAccess = "model-access".equals(rec.header("openai-intent")) && "model-access".equals(rec.header("x-interaction-type"));
            if (!cli && (!modelAccess || modelAccessGetsNotice)) return Reply.json(200, JSON.getNodeFactory().textNode(BILLING_NOTICE));
        }
        ObjectNode o = obj();
        o.set("data", snapshot(models));
        o.put("object", "list");
        return Reply.json(200, o.toString());
    }

    /** x-initiator agent while the last message is a person's text (see checkInitiator). */
    private Reply initiatorRefusal(Recorded rec, JsonNode req, String endpoint) {
        if (!checkInitiator || !"agent".equals(rec.header("x-initiator"))) return null;
        boolean personLast = switch (endpoint) {
            case "/chat/completions" -> lastOf(req.path("messages")).path("role").asText("").equals("user");
            case "/responses" -> {
                JsonNode input = req.path("input");
                JsonNode last = lastOf(input);
                yield input.isTextual() || last.path("type").asText("message").equals("message") && last.path("role").asText("").equals("user");
            }
            case "/v1/messages" -> {
                JsonNode last = lastOf(req.path("messages"));
                boolean toolResult = false;
                for (JsonNode block : last.path("content")) toolResult |= block.path("type").asText("").equals("tool_result");
                yield last.path("role").asText("").equals("user") && !toolResult;
            }
            default -> false;
        };
        return personLast ? Reply.json(400, errorBody(INVALID_INITIATOR, "invalid_request_error", null, null)) : null;
    }

    private static JsonNode lastOf(JsonNode array) {
        return array.isArray() && array.size() > 0 ? array.get(array.size() - 1) : obj();
    }

    /**
     * A 429 of the mid-2026 session ("session") or weekly ("weekly") limit, worded as Copilot words it; no retry-after
     * header: the wait is only in the text.
     */
    static Reply usageLimit(String window, long retryAfterSeconds) {
        String what = window.equals("weekly") ? "weekly rate limits" : "5 hour session limits";
        String code = window.equals("weekly") ? "user_weekly_rate_limited:pro" : "user_global_rate_limited:pro";
        String message = "Sorry, you've exceeded your " + what + ". Please retry after " + retryAfterSeconds + " seconds. (" + code + ")";
        return Reply.json(429, errorBody(message, null, "rate_limited", null));
    }

    /** copilot_usage of a usage-based answer: nano-AIU from the token counts and the model's prices. */
    private ObjectNode copilotUsage(Answer a) {
        JsonNode prices = Optional.ofNullable(findModel(a.model())).map(m -> m.path("billing").path("token_prices")).orElse(obj());
        double perToken = prices.path("input_price").asDouble(1) / Math.max(1, prices.path("batch_size").asDouble(1_000_000));
        long nano = Math.round((a.promptTokens() + 4.0 * a.completionTokens()) * perToken * 1e9);
        ObjectNode u = obj();
        u.put("total_nano_aiu", nano);
        ArrayNode details = u.putArray("token_details");
        details.addObject().put("type", "input").put("tokens", a.promptTokens() - a.cachedTokens());
        details.addObject().put("type", "cache").put("tokens", a.cachedTokens());
        details.addObject().put("type", "output").put("tokens", a.completionTokens());
        return u;
    }

    private Reply copilotDefault(Recorded rec, String sub) {
        if (rec.method().equals("GET") && sub.equals("/models")) return catalog(rec);
        if (!rec.method().equals("POST")) return notFound(rec.path());
        if (!List.of("/chat/completions", "/embeddings", "/responses", "/v1/messages", COUNT_TOKENS).contains(sub)) return notFound(rec.path());
        Reply tooLarge = responsesTooLarge(rec, sub);
        if (tooLarge != null) return tooLarge;
        JsonNode req = rec.json();
        if (req == null || !req.isObject()) {
            return Reply.json(400, errorBody("stub: the body is not a JSON object", "invalid_request_error", "invalid_request_body", null));
        }
        String model = req.path("model").asText("");
        boolean embeddings = sub.equals("/embeddings");
        Reply refusal = modelRefusal(model, sub.equals(COUNT_TOKENS) ? "/v1/messages" : sub, embeddings ? "embeddings" : "chat");
        if (refusal == null && !embeddings) refusal = requestRefusal(rec, req, sub, model);
        if (refusal == null && !embeddings) refusal = initiatorRefusal(rec, req, sub);
        if (refusal == null && !embeddings) refusal = mid2026Refusal(req, sub, model);
        if (refusal != null) return refusal;
        if (sub.equals(COUNT_TOKENS)) return Reply.json(200, obj().put("input_tokens", exactTokens(req)).toString());
        return switch (sub) {
            case "/chat/completions" -> chat(rec, req);
            case "/embeddings" -> embeddings(req);
            case "/responses" -> responses(rec, req);
            default -> messages(rec, req);
        };
    }

    /**
     * Unknown model or wrong type: model_not_supported. A model listing supported_endpoints only works on
     * those; a model listing none works on /chat/completions (and /embeddings for embedding models) only.
     */
    private Reply modelRefusal(String modelId, String endpoint, String type) {
        JsonNode model = findModel(modelId);
        if (model == null || !type.equals(model.path("capabilities").path("type").asText())) {
            return Reply.json(400, errorBody("The requested model is not supported.", "invalid_request_error", "model_not_supported", "model"));
        }
        JsonNode listed = model.path("supported_endpoints");
        boolean allowed = listed.isArray() && listed.size() > 0
            ? containsText(listed, endpoint)
            : endpoint.equals("/chat/completions") || endpoint.equals("/embeddings");
        if (!allowed) {
            return Reply.json(400, errorBody("model " + modelId + " is not supported via " + endpoint, null, "unsupported_api_for_model", null));
        }
        return null;
    }

    /** Request-level rules Copilot enforces beyond the model: reserved keyword, max_tokens on new GPTs, thinking budget. */
    private Reply requestRefusal(Recorded rec, JsonNode req, String endpoint, String modelId) {
        if (rec.body().contains("x-anthropic-billing-header")) {
            return Reply.json(400, errorBody("x-anthropic-billing-header is a reserved keyword and may not be used in the system prompt",
                "invalid_request_error", null, null));
        }
        if (endpoint.equals("/chat/completions") && isNewGpt(modelId) && req.has("max_tokens")) {
            return Reply.json(400, errorBody("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                "invalid_request_error", "unsupported_parameter", "max_tokens"));
        }
        if (endpoint.equals("/chat/completions") && req.has("thinking_budget")) {
            JsonNode supports = findModel(modelId).path("capabilities").path("supports");
            if (!supports.has("max_thinking_budget")) {
                return Reply.json(400, errorBody("thinking_budget is not supported by model " + modelId, "invalid_request_error", "invalid_request_body", "thinking_budget"));
            }
            int budget = req.path("thinking_budget").asInt();
            int min = supports.path("min_thinking_budget").asInt(0);
            int max = supports.path("max_thinking_budget").asInt();
            if (budget < min || budget > max) {
                return Reply.json(400, errorBody("thinking_budget must be between " + min + " and " + max, "invalid_request_error", "invalid_request_body", "thinking_budget"));
            }
        }
        return null;
    }

    private static boolean isNewGpt(String model) {
        return model.startsWith("gpt-5") || model.matches("o\\d.*");
    }

    private JsonNode findModel(String id) {
        synchronized (models) {
            for (JsonNode m : models) {
                if (m.path("id").asText().equals(id)) return m.deepCopy();
            }
        }
        return null;
    }

    // ---- Copilot since mid-2026: long tier, inline system turns, native token counts, the Responses cap ----

    static final String COUNT_TOKENS = "/v1/messages/count_tokens";
    /** Copilot's cap on a /responses body (WIRE.md: about 5 MiB). */
    static final int RESPONSES_CAP = 5 * 1024 * 1024;
    /** Where this stub puts a model's long-context tier (WIRE.md does not name the field). */
    static final String LONG_TIER = "long_context";

    /** Over the cap: an opaque 413, the way the upstream gateway answers, before the body is even parsed. */
    private static Reply responsesTooLarge(Recorded rec, String sub) {
        if (!sub.equals("/responses") || rec.body().getBytes(StandardCharsets.UTF_8).length <= RESPONSES_CAP) return null;
        return Reply.json(413, errorBody("Request Entity Too Large", null, null, null));
    }

    /**
     * What the mid-2026 Copilot refuses: contextTier on native /v1/messages (400 Extra inputs), a contextTier other
     * than long_context or for a model without a long tier, an inline system message before Claude 4.8, and the
     * scripted cyber_policy failures on /responses.
     */
    private Reply mid2026Refusal(JsonNode req, String sub, String modelId) {
        boolean messagesApi = sub.equals("/v1/messages") || sub.equals(COUNT_TOKENS);
        if (req.has("contextTier")) {
            if (messagesApi) {
                return Reply.json(400, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"contextTier: Extra inputs are not permitted\"}}");
            }
            JsonNode limits = findModel(modelId).path("capabilities").path("limits");
            if (!req.path("contextTier").asText().equals(LONG_TIER) || !limits.path(LONG_TIER).isObject()) {
                return Reply.json(400, errorBody("contextTier " + req.path("contextTier") + " is not available for model " + modelId,
                    "invalid_request_error", "invalid_request_body", "contextTier"));
            }
        }
        if (messagesApi && claudeVersion(modelId) < 48) {
            for (JsonNode m : req.path("messages")) {
                if (m.path("role").asText().equals("system")) {
                    return Reply.json(400, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":"
                        + "\"messages: Unexpected role \\\"system\\\". The Messages API accepts a top-level `system` parameter, not \\\"system\\\" as an input message role.\"}}");
                }
            }
        }
        if (sub.equals("/responses") && cyberPolicyFailures > 0) {
            cyberPolicyFailures--;
            return Reply.json(400, errorBody("This request was flagged by the cyber_policy safety system.", "invalid_request_error", "cyber_policy", null));
        }
        return null;
    }

    private Reply cyberPolicyFailed(JsonNode req) {
        ObjectNode response = obj();
        response.put("id", "resp_stub" + ids.incrementAndGet());
        response.put("object", "response");
        response.put("model", req.path("model").asText());
        response.put("status", "in_progress");
        response.putArray("output");
        if (!req.path("stream").asBoolean(false)) {
            response.put("status", "failed");
            response.putObject("error").put("code", "cyber_policy").put("message", "flagged by the cyber_policy safety system");
            return Reply.json(200, response.toString());
        }
        NamedEvents ev = new NamedEvents(true);
        ev.add("response.created").set("response", response.deepCopy());
        ev.add("response.in_progress").set("response", response.deepCopy());
        response.put("status", "failed");
        response.putObject("error").put("code", "cyber_policy").put("message", "flagged by the cyber_policy safety system");
        ev.add("response.failed").set("response", response);
        return Reply.events(ev.wire());
    }

    /** Claude's version times ten (claude-opus-4.8 -> 48, claude-fable-5.1 -> 51); 0 for other models. */
    static int claudeVersion(String modelId) {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("^claude-[a-z]+-(\\d+)(?:\\.(\\d))?").matcher(modelId);
        if (!m.find()) return 0;
        return Integer.parseInt(m.group(1)) * 10 + (m.group(2) == null ? 0 : Integer.parseInt(m.group(2)));
    }

    /** Copilot's exact count for a count_tokens body, as this stub computes it (a tokenizer stand-in: 1 per 3 characters). */
    static int exactTokens(JsonNode req) {
        int chars = req.path("messages").toString().length() + req.path("system").toString().length() + req.path("tools").toString().length();
        return 3 + chars / 3;
    }

    // ==== 7. Default answers ====

    private record ToolSpec(String name, JsonNode schema) {}

    private record ToolCall(String id, String name, String arguments) {}

    /** What the fake model "says", rendered per API below. */
    private record Answer(String model, String reasoning, String text, List<ToolCall> calls, int promptTokens, int completionTokens, int cachedTokens) {
        String finishReason() {
            return calls.isEmpty() ? "stop" : "tool_calls";
        }

        Answer withText(String t) {
            return new Answer(model, reasoning, t, calls, promptTokens, completionTokens, cachedTokens);
        }
    }

    /** A prompt containing this is answered with text even when tools are offered (Gemini CLI offers them on every turn). */
    static final String NO_TOOLS_MARKER = "copilot-api-no-tools";

    /** The shell tools the fake model calls with BASH_ARGUMENTS: Claude Code's and Gemini CLI's. */
    static final Set<String> SHELL_TOOLS = Set.of("Bash", "run_shell_command");

    /** What the fake model asks a Bash tool to run (Claude Code's tool loop in the tests): harmless, recognisable. */
    static final String BASH_ARGUMENTS = "{\"command\":\"echo copilot-api-tool-loop\",\"description\":\"Print a marker\"}";

    /** A prompt containing this makes the fake model hand the work to a subagent (Claude Code's Agent tool, older Task). */
    static final String SUBAGENT_MARKER = "copilot-api-subagent";

    /** How Claude Code tells the main agent that a background subagent ended. */
    static final String BACKGROUND_NOTIFICATION = "[SYSTEM NOTIFICATION - NOT USER INPUT]";

    /** The subagent's prompt in the N-th such call: a new text each time, so each test sees its own. */
    static String subagentPrompt(long n) {
        return "Subagent task " + n + ": use the Bash tool to print a marker, then report what it printed.";
    }

    /**
     * The fake model: after a tool result, "Tool said: (first 80 chars)"; with tools offered, a call to the
     * Agent (or Task) tool when the last message carries SUBAGENT_MARKER (a sentence after a background
     * subagent's notification), else (unless it carries NO_TOOLS_MARKER) to a shell tool if offered (Claude Code's
     * Bash, Gemini CLI's run_shell_command), else the first one (Claude models say a sentence first); else
     * "Hello from MODEL.". Thinking adds a fixed reasoning.
     */
    private Answer answer(String model, List<ToolSpec> tools, String toolResult, boolean toolsAllowed, boolean thinking, Recorded rec, String callIdPrefix,
                          JsonNode lastMessage) {
        String last = lastMessage == null ? "" : lastMessage.toString();
        boolean claude = model.startsWith("claude");
        String reasoning = thinking ? "The user wants a short answer; keep it brief." : null;
        String text;
        List<ToolCall> calls = List.of();
        if (toolResult != null) {
            text = "Tool said: " + (toolResult.length() > 80 ? toolResult.substring(0, 80) : toolResult);
        } else if (last.contains(BACKGROUND_NOTIFICATION)) {
            text = "The subagent has finished.";
        } else if (toolsAllowed && last.contains(SUBAGENT_MARKER)
                && tools.stream().anyMatch(t -> t.name().equals("Agent") || t.name().equals("Task"))) {
            String name = tools.stream().anyMatch(t -> t.name().equals("Agent")) ? "Agent" : "Task";
            ObjectNode input = obj();
            input.put("description", "Print a marker");
            input.put("prompt", subagentPrompt(ids.incrementAndGet()));
            input.put("subagent_type", "general-purpose");
            calls = List.of(new ToolCall(callIdPrefix + ids.incrementAndGet(), name, input.toString()));
            text = claude ? "I'll hand this to a subagent." : null;
        } else if (!tools.isEmpty() && toolsAllowed && !last.contains(NO_TOOLS_MARKER)) {
            ToolSpec tool = tools.stream().filter(t -> SHELL_TOOLS.contains(t.name())).findFirst().orElse(tools.get(0));
            String arguments = SHELL_TOOLS.contains(tool.name()) ? BASH_ARGUMENTS : argumentsFor(tool.schema());
            calls = List.of(new ToolCall(callIdPrefix + ids.incrementAndGet(), tool.name(), arguments));
            text = claude ? "I'll use " + tool.name() + "." : null;
        } else {
            text = "Hello from " + model + ".";
        }
        int produced = (text == null ? 0 : text.length()) + (reasoning == null ? 0 : reasoning.length())
            + calls.stream().mapToInt(c -> c.name().length() + c.arguments().length()).sum();
        int prompt = Math.max(1, rec.body().length() / 4);
        return new Answer(model, reasoning, text, calls, prompt, Math.max(1, produced / 4), Math.min(cachedTokensFor(rec), prompt));
    }

    // ---- Prompt cache ----

    /**
     * The stub's prompt cache (the promptCache knob), a stand-in for Copilot's: a body's prompt is its tools, then its
     * system prompt (system, instructions), then its messages or input items, each written back compactly by Jackson
     * (the bytes copilot-api sends, since it writes compact JSON), one after the other. A new prompt reuses the longest
     * prefix it shares with an earlier prompt sent to the same endpoint and model, counted at CACHE_CHARS_PER_TOKEN; the
     * reuse counts from CACHE_MIN_TOKENS on and in steps of CACHE_STEP_TOKENS (OpenAI's documented rule). On
     * /v1/messages caching is explicit, as Anthropic's: cache_control markers are not part of the prompt, a prefix is
     * reused only up to the end of a tool, system block or message that carried a marker in the earlier body, and only
     * when the new body carries a marker at or after it. The cache is per stub (one account); reset() empties it.
     */
    static final int CACHE_CHARS_PER_TOKEN = 4;
    static final int CACHE_MIN_TOKENS = 1024;
    static final int CACHE_STEP_TOKENS = 128;
    /** How many prompts the cache keeps per endpoint and model (the oldest go first). */
    private static final int CACHE_PROMPTS_KEPT = 64;

    private final Map<String, Deque<Prompt>> promptsSeen = new ConcurrentHashMap<>();

    /** A prompt as the cache sees it: its text and, where caching is explicit, the offsets where a marked part ends. */
    record Prompt(String text, boolean automatic, List<Integer> breakpoints) {
        static Prompt of(String endpoint, JsonNode req) {
            boolean explicit = endpoint.equals("/v1/messages");
            List<String> fields = switch (endpoint) {
                case "/responses" -> List.of("tools", "instructions", "input");
                case "/v1/messages" -> List.of("tools", "system", "messages");
                default -> List.of("tools", "messages");
            };
            StringBuilder text = new StringBuilder();
            List<Integer> breakpoints = new ArrayList<>();
            for (String field : fields) {
                JsonNode value = req.path(field);
                if (value.isMissingNode() || value.isNull()) continue;
                for (JsonNode part : value.isArray() ? value : List.of(value)) {
                    JsonNode unmarked = part.deepCopy();
                    boolean marked = explicit && removeMarkers(unmarked);
                    text.append(unmarked);
                    if (marked) breakpoints.add(text.length());
                }
            }
            return new Prompt(text.toString(), !explicit, List.copyOf(breakpoints));
        }

        /** How many characters of {@code newer} this earlier prompt lets the cache reuse. */
        int reusableBy(Prompt newer) {
            int common = 0;
            int max = Math.min(text.length(), newer.text().length());
            while (common < max && text.charAt(common) == newer.text().charAt(common)) common++;
            if (automatic) return common;
            int limit = Math.min(common, newer.breakpoints().isEmpty() ? 0 : newer.breakpoints().get(newer.breakpoints().size() - 1));
            return breakpoints.stream().filter(b -> b <= limit).max(Integer::compare).orElse(0);
        }

        private static boolean removeMarkers(JsonNode node) {
            boolean found = false;
            if (node instanceof ObjectNode o && o.remove("cache_control") != null) found = true;
            for (JsonNode child : node) found |= removeMarkers(child);
            return found;
        }
    }

    /** Cached input tokens of a default answer to {@code rec}: the prompt cache's figure, or the cachedTokens knob if larger. */
    private int cachedTokensFor(Recorded rec) {
        if (!promptCache || rec.json() == null) return cachedTokens;
        String endpoint = rec.path().substring("/copilot".length());
        Prompt prompt = Prompt.of(endpoint, rec.json());
        Deque<Prompt> seen = promptsSeen.computeIfAbsent(endpoint + " " + rec.json().path("model").asText(), k -> new ConcurrentLinkedDeque<>());
        int reused = seen.stream().mapToInt(earlier -> earlier.reusableBy(prompt)).max().orElse(0);
        seen.add(prompt);
        while (seen.size() > CACHE_PROMPTS_KEPT) seen.poll();
        int cached = cachedTokensOf(reused);
        rec.cache(prompt.text(), cached);
        return Math.max(cached, cachedTokens);
    }

    /** The cached tokens for a reused prefix of {@code chars} characters: none below the minimum, then whole steps. */
    static int cachedTokensOf(int chars) {
        int tokens = chars / CACHE_CHARS_PER_TOKEN;
        return tokens < CACHE_MIN_TOKENS ? 0 : tokens - (tokens - CACHE_MIN_TOKENS) % CACHE_STEP_TOKENS;
    }

    /** The last message or item that is not a system (or developer) instruction: what the fake model answers. */
    static JsonNode lastSpoken(JsonNode messages) {
        for (int i = messages.size() - 1; i > 0; i--) {
            String role = messages.get(i).path("role").asText("");
            if (!role.equals("system") && !role.equals("developer")) return messages.get(i);
        }
        return messages.get(0);
    }

    /**
     * Arguments from the schema's required properties: strings "x", numbers 1, booleans true, arrays [], objects {}
     * (types in either case: Google's clients write OBJECT, INTEGER). Also the answer to a json_schema response format.
     */
    static String argumentsFor(JsonNode schema) {
        ObjectNode args = obj();
        JsonNode props = schema == null ? obj() : schema.path("properties");
        for (JsonNode required : schema == null ? JSON.createArrayNode() : schema.path("required")) {
            String name = required.asText();
            switch (props.path(name).path("type").asText("string").toLowerCase(Locale.ROOT)) {
                case "integer", "number" -> args.put(name, 1);
                case "boolean" -> args.put(name, true);
                case "array" -> args.putArray(name);
                case "object" -> args.putObject(name);
                default -> args.put(name, "x");
            }
        }
        return args.toString();
    }

    private static boolean toolsAllowed(JsonNode req) {
        JsonNode choice = req.path("tool_choice");
        return !choice.asText("").equals("none") && !choice.path("type").asText("").equals("none");
    }

    // ---- /chat/completions ----

    private enum Family {
        CLAUDE, GPT, OTHER;

        static Family of(String model) {
            if (model.startsWith("claude")) return CLAUDE;
            if (model.startsWith("gpt") || model.matches("o\\d.*")) return GPT;
            return OTHER;
        }
    }

    private Reply chat(Recorded rec, JsonNode req) {
        JsonNode messages = req.path("messages");
        if (!messages.isArray() || messages.isEmpty()) {
            return Reply.json(400, errorBody("messages: field required", "invalid_request_error", "invalid_request_body", "messages"));
        }
        String model = req.path("model").asText();
        JsonNode last = lastSpoken(messages);
        String toolResult = last.path("role").asText().equals("tool") ? textOf(last.path("content")) : null;
        List<ToolSpec> tools = new ArrayList<>();
        for (JsonNode t : req.path("tools")) {
            tools.add(new ToolSpec(t.path("function").path("name").asText(), t.path("function").path("parameters")));
        }
        Family family = Family.of(model);
        boolean thinking = family == Family.CLAUDE && req.has("thinking_budget");
        Answer a = answer(model, tools, toolResult, toolsAllowed(req), thinking, rec, family == Family.CLAUDE ? "toolu_stub_" : "call_stub_", last);
        JsonNode schema = req.path("response_format").path("json_schema").path("schema");
        if (schema.isObject() && a.calls().isEmpty()) a = a.withText(argumentsFor(schema));
        if (req.path("stream").asBoolean(false)) return Reply.sse(chatChunks(a, family)).delayMs(streamDelayMs);
        ObjectNode completion = chatCompletion(a, family);
        if (reportsCost()) completion.set("copilot_usage", copilotUsage(a));
        return Reply.json(200, completion.toString());
    }

    private ObjectNode chatCompletion(Answer a, Family family) {
        boolean split = family == Family.CLAUDE && !a.calls().isEmpty();
        ObjectNode root = obj();
        ArrayNode choices = root.putArray("choices");
        ObjectNode first = obj();
        if (a.text() != null) first.put("content", a.text()); else first.putNull("content");
        first.put("role", "assistant");
        if (a.reasoning() != null) {
            first.put("reasoning_text", a.reasoning());
            first.put("reasoning_opaque", REASONING_SIGNATURE);
        }
        if (!split && !a.calls().isEmpty()) first.set("tool_calls", toolCallsJson(a.calls()));
        choices.add(choice(0, "message", first, a.finishReason()));
        if (split) {
            ObjectNode second = obj();
            second.putNull("content");
            second.put("role", "assistant");
            second.set("tool_calls", toolCallsJson(a.calls()));
            choices.add(choice(1, "message", second, a.finishReason()));
        }
        root.put("created", nowSeconds());
        root.put("id", "chatcmpl-stub" + ids.incrementAndGet());
        root.put("model", a.model());
        root.put("object", "chat.completion");
        root.set("prompt_filter_results", promptFilterResults());
        if (family == Family.GPT) root.put("system_fingerprint", "fp_stub");
        root.set("usage", chatUsage(a, family));
        return root;
    }

    private static ArrayNode toolCallsJson(List<ToolCall> calls) {
        ArrayNode out = JSON.createArrayNode();
        for (ToolCall c : calls) {
            ObjectNode call = out.addObject();
            call.put("id", c.id());
            call.put("type", "function");
            ObjectNode fn = call.putObject("function");
            fn.put("name", c.name());
            fn.put("arguments", c.arguments());
        }
        return out;
    }

    private static ObjectNode choice(int index, String field, ObjectNode body, String finishReason) {
        ObjectNode c = obj();
        c.put("index", index);
        c.set(field, body);
        if (finishReason != null) c.put("finish_reason", finishReason); else c.putNull("finish_reason");
        return c;
    }

    private static ArrayNode promptFilterResults() {
        ArrayNode results = JSON.createArrayNode();
        ObjectNode r = results.addObject();
        r.putObject("content_filter_results");
        r.put("prompt_index", 0);
        return results;
    }

    private static ObjectNode chatUsage(Answer a, Family family) {
        ObjectNode u = obj();
        u.put("completion_tokens", a.completionTokens());
        u.put("prompt_tokens", a.promptTokens());
        u.putObject("prompt_tokens_details").put("cached_tokens", a.cachedTokens());
        u.put("total_tokens", a.promptTokens() + a.completionTokens());
        if (family == Family.GPT) {
            ObjectNode details = u.putObject("completion_tokens_details");
            details.put("accepted_prediction_tokens", 0);
            details.put("reasoning_tokens", 0);
            details.put("rejected_prediction_tokens", 0);
        }
        return u;
    }

    /**
     * Copilot-shaped stream: empty-choices filter chunk; reasoning_text pieces then reasoning_opaque (Claude with
     * thinking_budget); content pieces (role only on GPT's first delta); tool calls (first fragment has
     * id/type/name, later ones only index + arguments; Claude: choice index 1 and tool-call index from 1);
     * finish chunk(s), one per choice; usage on the last finish chunk (Claude, others) or on a separate
     * empty-choices chunk (GPT); then [DONE].
     */
    private List<String> chatChunks(Answer a, Family family) {
        List<String> out = new ArrayList<>();
        ObjectNode filter = obj();
        filter.putArray("choices");
        filter.put("created", 0);
        filter.put("id", "");
        filter.set("prompt_filter_results", promptFilterResults());
        out.add(filter.toString());
        ChunkMaker chunks = new ChunkMaker("chatcmpl-stub" + ids.incrementAndGet(), nowSeconds(), a.model(), family);
        boolean needRole = family == Family.GPT;
        if (a.reasoning() != null) {
            for (String piece : pieces(a.reasoning())) out.add(chunks.delta(0, obj().put("reasoning_text", piece)));
            out.add(chunks.delta(0, obj().put("reasoning_opaque", REASONING_SIGNATURE)));
        }
        if (a.text() != null) {
            for (String piece : pieces(a.text())) {
                ObjectNode delta = obj();
                if (needRole) delta.put("role", "assistant");
                needRole = false;
                out.add(chunks.delta(0, delta.put("content", piece)));
            }
        }
        boolean split = family == Family.CLAUDE && !a.calls().isEmpty();
        int choiceIndex = split ? 1 : 0;
        int firstToolIndex = family == Family.CLAUDE ? 1 : 0;
        for (int k = 0; k < a.calls().size(); k++) {
            ToolCall call = a.calls().get(k);
            ObjectNode delta = obj();
            if (needRole) delta.put("role", "assistant").putNull("content");
            needRole = false;
            ObjectNode head = delta.putArray("tool_calls").addObject();
            head.put("index", firstToolIndex + k);
            head.put("id", call.id());
            head.put("type", "function");
            head.putObject("function").put("name", call.name()).put("arguments", "");
            out.add(chunks.delta(choiceIndex, delta));
            for (String piece : pieces(call.arguments())) {
                ObjectNode more = obj();
                ObjectNode fragment = more.putArray("tool_calls").addObject();
                fragment.put("index", firstToolIndex + k);
                fragment.putObject("function").put("arguments", piece);
                out.add(chunks.delta(choiceIndex, more));
            }
        }
        ObjectNode usageJson = chatUsage(a, family);
        // where a stream says it is unverified; the stub puts it inside the last chunk's usage
        if (reportsCost()) usageJson.set("copilot_usage", copilotUsage(a));
        if (family == Family.GPT) {
            out.add(chunks.finish(0, a.finishReason(), null));
            out.add(chunks.usageOnly(usageJson));
        } else if (split) {
            out.add(chunks.finish(0, a.finishReason(), null));
            out.add(chunks.finish(1, a.finishReason(), usageJson));
        } else {
            out.add(chunks.finish(0, a.finishReason(), usageJson));
        }
        out.add("[DONE]");
        return out;
    }

    private record ChunkMaker(String id, long created, String model, Family family) {
        String delta(int choiceIndex, ObjectNode delta) {
            return chunk(choice(choiceIndex, "delta", delta, null), null);
        }

        String finish(int choiceIndex, String reason, ObjectNode usage) {
            return chunk(choice(choiceIndex, "delta", obj(), reason), usage);
        }

        String usageOnly(ObjectNode usage) {
            return chunk(null, usage);
        }

        private String chunk(ObjectNode choice, ObjectNode usage) {
            ObjectNode c = obj();
            ArrayNode choices = c.putArray("choices");
            if (choice != null) {
                if (family != Family.GPT && choice.path("finish_reason").isNull()) choice.remove("finish_reason");
                choices.add(choice);
            }
            c.put("created", created);
            c.put("id", id);
            c.put("model", model);
            if (family == Family.GPT) c.put("system_fingerprint", "fp_stub");
            if (usage != null) c.set("usage", usage);
            return c.toString();
        }
    }

    // ---- /responses ----

    private Reply responses(Recorded rec, JsonNode req) {
        if (cyberPolicyFailedResponses > 0) {
            cyberPolicyFailedResponses--;
            return cyberPolicyFailed(req);
        }
        String model = req.path("model").asText();
        JsonNode input = req.path("input");
        String toolResult = null;
        if (input.isArray() && input.size() > 0) {
            JsonNode last = lastSpoken(input);
            if (last.path("type").asText().equals("function_call_output")) toolResult = textOf(last.path("output"));
        }
        List<ToolSpec> tools = new ArrayList<>();
        for (JsonNode t : req.path("tools")) {
            if (t.path("type").asText().equals("function")) tools.add(new ToolSpec(t.path("name").asText(), t.path("parameters")));
        }
        JsonNode reasoning = req.path("reasoning");
        boolean thinking = reasoning.isObject() && !reasoning.path("effort").asText("").equals("none");
        Answer a = answer(model, tools, toolResult, toolsAllowed(req), thinking, rec, "call_stub_",
            input.isArray() && input.size() > 0 ? lastSpoken(input) : input);
        boolean encrypted = containsText(req.path("include"), "reasoning.encrypted_content");
        List<ObjectNode> items = responseItems(a, encrypted);
        String id = "resp_stub" + ids.incrementAndGet();
        if (!req.path("stream").asBoolean(false)) return Reply.json(200, responseObject(id, req, a, items, "completed").toString());
        return Reply.events(responseEvents(id, req, a, items)).delayMs(streamDelayMs);
    }

    private List<ObjectNode> responseItems(Answer a, boolean encrypted) {
        List<ObjectNode> items = new ArrayList<>();
        if (a.reasoning() != null) {
            ObjectNode r = obj();
            r.put("id", "rs_stub" + ids.incrementAndGet());
            r.put("type", "reasoning");
            ObjectNode summary = r.putArray("summary").addObject();
            summary.put("type", "summary_text");
            summary.put("text", a.reasoning());
            if (encrypted) r.put("encrypted_content", REASONING_SIGNATURE);
            items.add(r);
        }
        if (a.text() != null) {
            ObjectNode m = obj();
            m.put("id", "msg_stub" + ids.incrementAndGet());
            m.put("type", "message");
            m.put("status", "completed");
            m.put("role", "assistant");
            ObjectNode part = m.putArray("content").addObject();
            part.put("type", "output_text");
            part.put("text", a.text());
            part.putArray("annotations");
            items.add(m);
        }
        for (ToolCall c : a.calls()) {
            ObjectNode f = obj();
            f.put("id", "fc_stub" + ids.incrementAndGet());
            f.put("type", "function_call");
            f.put("status", "completed");
            f.put("arguments", c.arguments());
            f.put("call_id", c.id());
            f.put("name", c.name());
            items.add(f);
        }
        return items;
    }

    private ObjectNode responseObject(String id, JsonNode req, Answer a, List<ObjectNode> items, String status) {
        boolean done = status.equals("completed");
        ObjectNode r = obj();
        r.put("id", id);
        r.put("object", "response");
        r.put("created_at", nowSeconds());
        r.put("status", status);
        r.putNull("error");
        r.putNull("incomplete_details");
        r.set("instructions", req.path("instructions").isMissingNode() ? null : req.get("instructions"));
        r.put("model", a.model());
        ArrayNode output = r.putArray("output");
        if (done) items.forEach(output::add);
        r.put("parallel_tool_calls", true);
        r.put("store", req.path("store").asBoolean(false));
        r.set("tool_choice", req.has("tool_choice") ? req.get("tool_choice") : JSON.getNodeFactory().textNode("auto"));
        r.set("tools", req.has("tools") ? req.get("tools") : JSON.createArrayNode());
        if (done) {
            ObjectNode u = r.putObject("usage");
            u.put("input_tokens", a.promptTokens());
            u.putObject("input_tokens_details").put("cached_tokens", a.cachedTokens());
            u.put("output_tokens", a.completionTokens());
            u.putObject("output_tokens_details").put("reasoning_tokens", a.reasoning() == null ? 0 : a.reasoning().length() / 4);
            u.put("total_tokens", a.promptTokens() + a.completionTokens());
        } else {
            r.putNull("usage");
        }
        return r;
    }

    /** Named events with sequence_number, in the order the OpenAI SDK expects (every delta after its item's added). */
    private List<String> responseEvents(String id, JsonNode req, Answer a, List<ObjectNode> items) {
        NamedEvents ev = new NamedEvents(true);
        ev.add("response.created").set("response", responseObject(id, req, a, items, "in_progress"));
        ev.add("response.in_progress").set("response", responseObject(id, req, a, items, "in_progress"));
        for (int i = 0; i < items.size(); i++) {
            ObjectNode item = items.get(i);
            String itemId = item.path("id").asText();
            ObjectNode added = item.deepCopy();
            switch (item.path("type").asText()) {
                case "reasoning" -> {
                    String text = item.path("summary").get(0).path("text").asText();
                    added.putArray("summary");
                    added.remove("encrypted_content");
                    ev.add("response.output_item.added").put("output_index", i).set("item", added);
                    ObjectNode emptyPart = obj().put("type", "summary_text").put("text", "");
                    ev.add("response.reasoning_summary_part.added").put("item_id", itemId).put("output_index", i).put("summary_index", 0).set("part", emptyPart);
                    for (String piece : pieces(text)) {
                        ev.add("response.reasoning_summary_text.delta").put("item_id", itemId).put("output_index", i).put("summary_index", 0).put("delta", piece);
                    }
                    ev.add("response.reasoning_summary_text.done").put("item_id", itemId).put("output_index", i).put("summary_index", 0).put("text", text);
                    ev.add("response.reasoning_summary_part.done").put("item_id", itemId).put("output_index", i).put("summary_index", 0)
                        .set("part", item.path("summary").get(0).deepCopy());
                }
                case "message" -> {
                    JsonNode part = item.path("content").get(0);
                    String text = part.path("text").asText();
                    added.put("status", "in_progress").putArray("content");
                    ev.add("response.output_item.added").put("output_index", i).set("item", added);
                    ObjectNode emptyPart = obj().put("type", "output_text").put("text", "");
                    emptyPart.putArray("annotations");
                    ev.add("response.content_part.added").put("item_id", itemId).put("output_index", i).put("content_index", 0).set("part", emptyPart);
                    for (String piece : pieces(text)) {
                        ev.add("response.output_text.delta").put("item_id", itemId).put("output_index", i).put("content_index", 0).put("delta", piece);
                    }
                    ev.add("response.output_text.done").put("item_id", itemId).put("output_index", i).put("content_index", 0).put("text", text);
                    ev.add("response.content_part.done").put("item_id", itemId).put("output_index", i).put("content_index", 0).set("part", part.deepCopy());
                }
                default -> {
                    String args = item.path("arguments").asText();
                    added.put("status", "in_progress").put("arguments", "");
                    ev.add("response.output_item.added").put("output_index", i).set("item", added);
                    for (String piece : pieces(args)) {
                        ev.add("response.function_call_arguments.delta").put("item_id", itemId).put("output_index", i).put("delta", piece);
                    }
                    ev.add("response.function_call_arguments.done").put("item_id", itemId).put("output_index", i).put("arguments", args);
                }
            }
            ev.add("response.output_item.done").put("output_index", i).set("item", item.deepCopy());
        }
        ObjectNode completed = ev.add("response.completed");
        completed.set("response", responseObject(id, req, a, items, "completed"));
        if (reportsCost()) completed.set("copilot_usage", copilotUsage(a));
        return ev.wire();
    }

    /** Builds "event: T\ndata: {"type":T,...}\n\n" texts; the data nodes are filled in after add(). */
    private static final class NamedEvents {
        private final List<ObjectNode> events = new ArrayList<>();
        private final boolean sequenceNumbers;

        NamedEvents(boolean sequenceNumbers) {
            this.sequenceNumbers = sequenceNumbers;
        }

        ObjectNode add(String type) {
            ObjectNode e = obj();
            e.put("type", type);
            if (sequenceNumbers) e.put("sequence_number", events.size());
            events.add(e);
            return e;
        }

        List<String> wire() {
            List<String> out = new ArrayList<>();
            for (ObjectNode e : events) out.add("event: " + e.path("type").asText() + "\ndata: " + e + "\n\n");
            return out;
        }
    }

    // ---- /v1/messages ----

    private Reply messages(Recorded rec, JsonNode req) {
        String model = req.path("model").asText();
        JsonNode msgs = req.path("messages");
        if (!msgs.isArray() || msgs.isEmpty()) {
            return Reply.json(400, errorBody("messages: Field required", "invalid_request_error", "invalid_request_body", "messages"));
        }
        JsonNode last = msgs.get(msgs.size() - 1);
        String toolResult = null;
        if (last.path("role").asText().equals("user")) {
            for (JsonNode block : last.path("content")) {
                if (block.path("type").asText().equals("tool_result")) {
                    toolResult = textOf(block.path("content"));
                    break;
                }
            }
        }
        List<ToolSpec> tools = new ArrayList<>();
        for (JsonNode t : req.path("tools")) {
            if (t.has("input_schema")) tools.add(new ToolSpec(t.path("name").asText(), t.path("input_schema")));
        }
        String thinkingType = req.path("thinking").path("type").asText("");
        boolean thinking = thinkingType.equals("enabled") || thinkingType.equals("adaptive");
        Answer a = answer(model, tools, toolResult, toolsAllowed(req), thinking, rec, "toolu_stub_", last);
        if (a.reasoning() != null && claudeVersion(model) >= 47 && !req.path("thinking").path("display").asText("").equals("summarized")) {
            // Claude 4.7+ omits the thinking text unless asked for a summary: the block keeps only its signature
            a = new Answer(a.model(), "", a.text(), a.calls(), a.promptTokens(), a.completionTokens(), a.cachedTokens());
        }
        String id = "msg_stub" + ids.incrementAndGet();
        if (req.path("stream").asBoolean(false)) return Reply.events(messageEvents(id, a)).delayMs(streamDelayMs);
        ObjectNode m = messageShell(id, a);
        ArrayNode content = m.putArray("content");
        if (a.reasoning() != null) content.addObject().put("type", "thinking").put("thinking", a.reasoning()).put("signature", REASONING_SIGNATURE);
        if (a.text() != null) content.addObject().put("type", "text").put("text", a.text());
        for (ToolCall c : a.calls()) {
            content.addObject().put("type", "tool_use").put("id", c.id()).put("name", c.name()).set("input", parse(c.arguments()));
        }
        m.put("stop_reason", a.calls().isEmpty() ? "end_turn" : "tool_use");
        m.set("usage", messageUsage(a, a.completionTokens()));
        if (reportsCost()) m.set("copilot_usage", copilotUsage(a));
        return Reply.json(200, m.toString());
    }

    private static ObjectNode messageShell(String id, Answer a) {
        ObjectNode m = obj();
        m.put("id", id);
        m.put("type", "message");
        m.put("role", "assistant");
        m.put("model", a.model());
        m.putArray("content");
        m.putNull("stop_reason");
        m.putNull("stop_sequence");
        return m;
    }

    private static ObjectNode messageUsage(Answer a, int outputTokens) {
        ObjectNode u = obj();
        u.put("input_tokens", a.promptTokens() - a.cachedTokens());
        u.put("cache_creation_input_tokens", 0);
        u.put("cache_read_input_tokens", a.cachedTokens());
        u.put("output_tokens", outputTokens);
        return u;
    }

    private List<String> messageEvents(String id, Answer a) {
        NamedEvents ev = new NamedEvents(false);
        ObjectNode start = messageShell(id, a);
        start.set("usage", messageUsage(a, 1));
        ev.add("message_start").set("message", start);
        ev.add("ping");
        int index = 0;
        if (a.reasoning() != null) {
            ev.add("content_block_start").put("index", index).set("content_block", obj().put("type", "thinking").put("thinking", "").put("signature", ""));
            for (String piece : pieces(a.reasoning())) {
                ev.add("content_block_delta").put("index", index).set("delta", obj().put("type", "thinking_delta").put("thinking", piece));
            }
            ev.add("content_block_delta").put("index", index).set("delta", obj().put("type", "signature_delta").put("signature", REASONING_SIGNATURE));
            ev.add("content_block_stop").put("index", index++);
        }
        if (a.text() != null) {
            ev.add("content_block_start").put("index", index).set("content_block", obj().put("type", "text").put("text", ""));
            for (String piece : pieces(a.text())) {
                ev.add("content_block_delta").put("index", index).set("delta", obj().put("type", "text_delta").put("text", piece));
            }
            ev.add("content_block_stop").put("index", index++);
        }
        for (ToolCall c : a.calls()) {
            ObjectNode block = obj().put("type", "tool_use").put("id", c.id()).put("name", c.name());
            block.putObject("input");
            ev.add("content_block_start").put("index", index).set("content_block", block);
            for (String piece : pieces(c.arguments())) {
                ev.add("content_block_delta").put("index", index).set("delta", obj().put("type", "input_json_delta").put("partial_json", piece));
            }
            ev.add("content_block_stop").put("index", index++);
        }
        ObjectNode delta = ev.add("message_delta");
        delta.putObject("delta").put("stop_reason", a.calls().isEmpty() ? "end_turn" : "tool_use").putNull("stop_sequence");
        delta.putObject("usage").put("output_tokens", a.completionTokens());
        ev.add("message_stop");
        return ev.wire();
    }

    // ---- /embeddings ----

    /** Floats always, whatever encoding_format asks (the proxy encodes base64 itself); deterministic per input and size. */
    private Reply embeddings(JsonNode req) {
        JsonNode input = req.path("input");
        List<String> inputs = new ArrayList<>();
        if (input.isTextual()) {
            inputs.add(input.asText());
        } else if (input.isArray()) {
            for (JsonNode i : input) inputs.add(i.isTextual() ? i.asText() : i.toString());
        } else {
            return Reply.json(400, errorBody("input: field required", "invalid_request_error", "invalid_request_body", "input"));
        }
        int dims = req.path("dimensions").asInt(0) > 0 ? req.path("dimensions").asInt() : 8;
        ObjectNode o = obj();
        o.put("object", "list");
        ArrayNode data = o.putArray("data");
        int tokens = 0;
        for (int i = 0; i < inputs.size(); i++) {
            ObjectNode e = data.addObject();
            e.put("object", "embedding");
            e.put("index", i);
            ArrayNode vector = e.putArray("embedding");
            for (float f : embeddingOf(inputs.get(i), dims)) vector.add(f);
            tokens += Math.max(1, inputs.get(i).length() / 4);
        }
        o.put("model", req.path("model").asText());
        o.putObject("usage").put("prompt_tokens", tokens).put("total_tokens", tokens);
        return Reply.json(200, o.toString());
    }

    /** The vector the stub answers for {@code input} with {@code dims} dimensions (for tests to compare against). */
    static float[] embeddingOf(String input, int dims) {
        SplittableRandom random = new SplittableRandom(input.hashCode() * 31L + dims);
        float[] v = new float[dims];
        for (int i = 0; i < dims; i++) v[i] = (float) (random.nextDouble() * 2 - 1);
        return v;
    }

    // ==== 8. Catalog and usage ====

    private static ArrayNode defaultModels() {
        ArrayNode all = JSON.createArrayNode();
        all.add(chatModel("gpt-4.1", "GPT-4.1", "Azure OpenAI", "gpt-4.1-2025-04-14", 128000, 16384, 128000, 0, "versatile"));
        all.add(chatModel("gpt-4o", "GPT-4o", "Azure OpenAI", "gpt-4o-2024-11-20", 128000, 4096, 64000, 0, "versatile"));
        all.add(endpoints(chatModel("gpt-5-mini", "GPT-5 mini", "Azure OpenAI", "gpt-5-mini", 264000, 64000, 128000, 0, "lightweight"),
            "/chat/completions", "/responses"));
        all.add(endpoints(chatModel("gpt-5.1-codex", "GPT-5.1-Codex", "OpenAI", "gpt-5.1-codex", 400000, 128000, 272000, 1, "powerful"),
            "/responses"));
        all.add(claude("claude-sonnet-4.5", "Claude Sonnet 4.5", 144000, 32000, 128000, 1, 32000));
        all.add(claude("claude-sonnet-4", "Claude Sonnet 4", 216000, 16000, 128000, 1, 16000));
        all.add(claude("claude-opus-4.1", "Claude Opus 4.1", 80000, 16000, 80000, 10, 16000));
        all.add(claude("claude-haiku-4.5", "Claude Haiku 4.5", 144000, 32000, 128000, 0.33, 32000));
        all.add(endpoints(chatModel("gemini-2.5-pro", "Gemini 2.5 Pro", "Google", "gemini-2.5-pro", 128000, 64000, 108608, 1, "powerful"),
            "/chat/completions"));
        ObjectNode embedding = obj();
        ObjectNode caps = embedding.putObject("capabilities");
        caps.put("family", "text-embedding-3-small");
        caps.putObject("limits").put("max_inputs", 512);
        caps.put("object", "model_capabilities");
        caps.putObject("supports").put("dimensions", true);
        caps.put("tokenizer", "cl100k_base");
        caps.put("type", "embeddings");
        embedding.put("id", "text-embedding-3-small");
        embedding.put("model_picker_enabled", false);
        embedding.put("name", "Embedding V3 small");
        embedding.put("object", "model");
        embedding.put("preview", false);
        embedding.put("vendor", "Azure OpenAI");
        embedding.put("version", "text-embedding-3-small");
        all.add(embedding);
        return all;
    }

    private static ArrayNode mid2026Catalog() {
        ArrayNode all = JSON.createArrayNode();
        all.add(claude("claude-opus-4.7", "Claude Opus 4.7", 200000, 64000, 168000, 3, 32000));
        all.add(longTier(claude("claude-opus-4.8", "Claude Opus 4.8", 200000, 64000, 168000, 3, 32000), 1000000, 936000, 64000));
        all.add(claude("claude-opus-4.8-fast", "Claude Opus 4.8 (fast)", 200000, 64000, 168000, 6, 32000));
        all.add(claude("claude-opus-5", "Claude Opus 5", 200000, 64000, 168000, 3, 32000));
        all.add(longTier(claude("claude-sonnet-5", "Claude Sonnet 5", 200000, 64000, 168000, 1, 32000), 1000000, 936000, 64000));
        all.add(claude("claude-fable-5", "Claude Fable 5", 200000, 32000, 168000, 1, 32000));
        all.add(claude("claude-fable-5.1", "Claude Fable 5.1", 200000, 32000, 168000, 1, 32000));
        all.add(endpoints(chatModel("gpt-5.6-luna", "GPT-5.6 Luna", "OpenAI", "gpt-5.6-luna", 400000, 128000, 272000, 1, "powerful"), "/responses"));
        all.add(endpoints(chatModel("gpt-5.6-sol", "GPT-5.6 Sol", "OpenAI", "gpt-5.6-sol", 400000, 128000, 272000, 1, "powerful"), "/responses"));
        all.add(longTier(endpoints(chatModel("gpt-6-sol", "GPT-6 Sol", "OpenAI", "gpt-6-sol", 400000, 64000, 272000, 1, "powerful"), "/responses"),
            1050000, 922000, 128000));
        all.add(endpoints(chatModel("gpt-6-astra", "GPT-6 Astra", "OpenAI", "gpt-6-astra", 400000, 128000, 272000, 1, "powerful"), "/responses"));
        all.add(endpoints(chatModel("gemini-3.1-flash", "Gemini 3.1 Flash", "Google", "gemini-3.1-flash", 1000000, 64000, 900000, 0.33, "lightweight"),
            "/chat/completions"));
        return all;
    }

    private static ObjectNode longTier(ObjectNode model, int context, int prompt, int output) {
        ObjectNode tier = ((ObjectNode) model.path("capabilities").path("limits")).putObject(LONG_TIER);
        tier.put("max_context_window_tokens", context);
        tier.put("max_prompt_tokens", prompt);
        tier.put("max_output_tokens", output);
        return model;
    }

    private static ObjectNode chatModel(String id, String name, String vendor, String version, int context, int output, int prompt,
                                        double multiplier, String category) {
        ObjectNode m = obj();
        ObjectNode billing = m.putObject("billing");
        billing.put("is_premium", multiplier > 0);
        billing.put("multiplier", multiplier);
        ObjectNode caps = m.putObject("capabilities");
        caps.put("family", id);
        ObjectNode limits = caps.putObject("limits");
        limits.put("max_context_window_tokens", context);
        limits.put("max_output_tokens", output);
        limits.put("max_prompt_tokens", prompt);
        ObjectNode vision = limits.putObject("vision");
        vision.put("max_prompt_image_size", 3145728);
        vision.put("max_prompt_images", 1);
        vision.putArray("supported_media_types").add("image/jpeg").add("image/png").add("image/webp").add("image/gif");
        caps.put("object", "model_capabilities");
        ObjectNode supports = caps.putObject("supports");
        supports.put("parallel_tool_calls", true);
        supports.put("streaming", true);
        supports.put("structured_outputs", !id.startsWith("claude"));
        supports.put("tool_calls", true);
        supports.put("vision", true);
        caps.put("tokenizer", "o200k_base");
        caps.put("type", "chat");
        m.put("id", id);
        m.put("is_chat_default", id.equals("gpt-4.1"));
        m.put("is_chat_fallback", id.equals("gpt-4.1"));
        m.put("model_picker_category", category);
        m.put("model_picker_enabled", true);
        m.put("name", name);
        m.put("object", "model");
        ObjectNode policy = m.putObject("policy");
        policy.put("state", "enabled");
        policy.put("terms", "Enable access to the latest " + name + " model from " + vendor + ".");
        m.put("preview", false);
        m.put("vendor", vendor);
        m.put("version", version);
        return m;
    }

    private static ObjectNode claude(String id, String name, int context, int output, int prompt, double multiplier, int maxThinking) {
        ObjectNode m = chatModel(id, name, "Anthropic", id, context, output, prompt, multiplier, multiplier < 1 ? "lightweight" : "powerful");
        ObjectNode supports = (ObjectNode) m.path("capabilities").path("supports");
        supports.put("max_thinking_budget", maxThinking);
        supports.put("min_thinking_budget", 1024);
        return endpoints(m, "/v1/messages", "/chat/completions");
    }

    /**
     * The mid-2026 catalog fields of a model: billing.token_prices (AI Credits per batch_size tokens, with a
     * long_context tier for Claude models), supports.web_search, the reasoning-effort values, and (Claude) the long
     * tier's limits. Multipliers stay in the catalog but no longer bill.
     */
    private static void usageBasedFields(ObjectNode m) {
        boolean claude = m.path("id").asText().startsWith("claude");
        ObjectNode billing = child(m, "billing");
        ObjectNode prices = billing.putObject("token_prices");
        prices.put("batch_size", 1_000_000);
        prices.put("input_price", claude ? 300 : 125);
        prices.put("cache_price", claude ? 30 : 12.5);
        prices.put("output_price", claude ? 1500 : 1000);
        ObjectNode caps = child(m, "capabilities");
        if (!caps.path("type").asText().equals("chat")) return;
        ObjectNode supports = child(caps, "supports");
        supports.put("web_search", !claude);
        supports.putArray("reasoning_effort").add("low").add("medium").add("high").add("xhigh").add("max");
        if (claude) {
            ObjectNode longTier = prices.putObject("long_context");
            longTier.put("input_price", 600);
            longTier.put("cache_price", 60);
            longTier.put("output_price", 2250);
            longTier.put("threshold_tokens", 200000);
            ObjectNode limits = child(caps, "limits").putObject("long_context");
            limits.put("max_context_window_tokens", 1000000);
            limits.put("max_prompt_tokens", 936000);
        }
    }

    private static ObjectNode child(ObjectNode parent, String name) {
        return parent.get(name) instanceof ObjectNode o ? o : parent.putObject(name);
    }

    private static void legacyFields(ObjectNode m) {
        if (m.path("billing").isObject()) ((ObjectNode) m.path("billing")).remove("token_prices");
        JsonNode caps = m.path("capabilities");
        if (caps.path("supports").isObject()) ((ObjectNode) caps.path("supports")).remove(List.of("web_search", "reasoning_effort"));
        if (caps.path("limits").isObject()) ((ObjectNode) caps.path("limits")).remove("long_context");
    }

    private static ObjectNode endpoints(ObjectNode model, String... endpoints) {
        ArrayNode list = model.putArray("supported_endpoints");
        for (String e : endpoints) list.add(e);
        return model;
    }

    private ObjectNode defaultUsage() {
        ObjectNode u = obj();
        u.put("login", LOGIN);
        u.put("access_type_sku", "plus_monthly_subscriber_quota");
        u.put("analytics_tracking_id", "0123456789abcdef0123456789abcdef");
        u.put("assigned_date", "2025-01-15T10:00:00+01:00");
        u.put("can_signup_for_limited", false);
        u.put("chat_enabled", true);
        u.put("copilot_plan", "individual");
        u.putObject("endpoints").put("api", copilotUrl());
        u.putArray("organization_login_list");
        u.putArray("organization_list");
        u.put("quota_reset_date", "2026-12-01");
        u.put("quota_reset_date_utc", "2026-12-01T00:00:00.000Z");
        ObjectNode snapshots = u.putObject("quota_snapshots");
        snapshots.set("chat", quota("chat", 0, 0, true));
        snapshots.set("completions", quota("completions", 0, 0, true));
        snapshots.set("premium_interactions", quota("premium_interactions", 300, 180, false));
        return u;
    }

    private static ObjectNode quota(String id, int entitlement, int remaining, boolean unlimited) {
        ObjectNode q = obj();
        q.put("entitlement", entitlement);
        q.put("overage_count", 0);
        q.put("overage_permitted", false);
        q.put("percent_remaining", unlimited ? 100.0 : 100.0 * remaining / entitlement);
        q.put("quota_id", id);
        q.put("quota_remaining", (double) remaining);
        q.put("remaining", remaining);
        q.put("unlimited", unlimited);
        q.put("timestamp_utc", "2026-11-20T12:00:00.000Z");
        return q;
    }

    // ==== 9. Reply and Recorded ====

    /**
     * A scripted answer. Factories: json, raw, error, sse, rawSse, events, hang, fromFile; modifiers (each
     * returns a copy): status, header, delayMs (JSON: before answering; streams: between events), cutAfter.
     */
    record Reply(Kind kind, int status, String body, List<String> events, Map<String, String> headers, long delayMs, int cutAfter, long hangMs) {
        enum Kind { JSON, SSE, RAW_SSE, HANG, FLOOD }

        Reply {
            events = List.copyOf(events);
            headers = Collections.unmodifiableMap(new LinkedHashMap<>(headers));
        }

        static Reply json(int status, String body) {
            return json(status, body, Map.of());
        }

        static Reply json(int status, String body, Map<String, String> headers) {
            return new Reply(Kind.JSON, status, body, List.of(), headers, 0, -1, 0);
        }

        static Reply json(int status, JsonNode body) {
            return json(status, body.toString());
        }

        /** A non-JSON body (an HTML gateway page, a form answer, ...). */
        static Reply raw(int status, String contentType, String body) {
            return json(status, body, Map.of("Content-Type", contentType));
        }

        /** Copilot's error shape: {"error":{"message":M,"code":C}}, e.g. error(402, "quota_exceeded", "..."). */
        static Reply error(int status, String code, String message) {
            return json(status, errorBody(message, null, code, null));
        }

        /** Each string is sent as "data: S\n\n" (multi-line S: one data line per line); no [DONE] unless listed. */
        static Reply sse(List<String> dataLines) {
            return new Reply(Kind.SSE, 200, "", dataLines, Map.of(), 0, -1, 0);
        }

        static Reply sse(String... dataLines) {
            return sse(List.of(dataLines));
        }

        /** The text as-is; events are the "\n\n"-separated parts (for delays and cuts). */
        static Reply rawSse(String wholeText) {
            List<String> parts = new ArrayList<>();
            int from = 0;
            while (from < wholeText.length()) {
                int end = wholeText.indexOf("\n\n", from);
                int to = end < 0 ? wholeText.length() : end + 2;
                parts.add(wholeText.substring(from, to));
                from = to;
            }
            return new Reply(Kind.RAW_SSE, 200, "", parts, Map.of(), 0, -1, 0);
        }

        /** Already framed events ("event: x\ndata: y\n\n" each), sent one by one. */
        static Reply events(List<String> framedEvents) {
            return new Reply(Kind.RAW_SSE, 200, "", framedEvents, Map.of(), 0, -1, 0);
        }

        /** 200 text/event-stream headers, then nothing for {@code ms}, then a normal end with an empty body. */
        static Reply hang(long ms) {
            return new Reply(Kind.HANG, 200, "", List.of(), Map.of(), 0, -1, ms);
        }

        /** A chat stream of {@code bytes} bytes sent as fast as the client reads (the byte count: {@link Recorded#bytesSent()}). */
        static Reply flood(long bytes) {
            return new Reply(Kind.FLOOD, 200, "", List.of(), Map.of(), 0, -1, bytes);
        }

        Reply status(int newStatus) {
            return new Reply(kind, newStatus, body, events, headers, delayMs, cutAfter, hangMs);
        }

        Reply header(String name, String value) {
            Map<String, String> h = new LinkedHashMap<>(headers);
            h.put(name, value);
            return new Reply(kind, status, body, events, h, delayMs, cutAfter, hangMs);
        }

        Reply delayMs(long ms) {
            return new Reply(kind, status, body, events, headers, ms, cutAfter, hangMs);
        }

        /** Streams: after n events, drop the connection (no [DONE], no terminating chunk). */
        Reply cutAfter(int n) {
            return new Reply(kind, status, body, events, headers, delayMs, n, hangMs);
        }

        /** The bytes of each event as written. */
        List<String> wireEvents() {
            if (kind != Kind.SSE) return events;
            List<String> out = new ArrayList<>();
            for (String e : events) out.add("data: " + e.replace("\n", "\ndata: ") + "\n\n");
            return out;
        }

        /**
         * A reply from a fixture: *.json is json(200, text); *.sse sends each line starting with "data:" as one
         * event ("[DONE]" included when present); *.events is rawSse(text). Leading directive lines, in any
         * file: "#status 429", "#header retry-after: 7", "#delay 50", "#cut 3".
         */
        static Reply fromFile(Path p) throws IOException {
            String name = p.getFileName().toString();
            List<String> lines = List.of(Files.readString(p, StandardCharsets.UTF_8).replace("\r\n", "\n").split("\n", -1));
            int status = 200;
            long delay = 0;
            int cut = -1;
            Map<String, String> headers = new LinkedHashMap<>();
            int i = 0;
            for (; i < lines.size() && lines.get(i).startsWith("#"); i++) {
                String line = lines.get(i);
                String[] kv = line.substring(1).split("\\s+", 2);
                String arg = kv.length > 1 ? kv[1].trim() : "";
                switch (kv[0]) {
                    case "status" -> status = Integer.parseInt(arg);
                    case "delay" -> delay = Long.parseLong(arg);
                    case "cut" -> cut = Integer.parseInt(arg);
                    case "header" -> {
                        int colon = arg.indexOf(':');
                        if (colon < 1) throw new IllegalArgumentException(p + ": bad header directive: " + line);
                        headers.put(arg.substring(0, colon).trim(), arg.substring(colon + 1).trim());
                    }
                    default -> throw new IllegalArgumentException(p + ": unknown directive: " + line);
                }
            }
            List<String> rest = lines.subList(i, lines.size());
            Reply r;
            if (name.endsWith(".json")) {
                r = json(status, String.join("\n", rest).strip());
            } else if (name.endsWith(".sse")) {
                List<String> data = new ArrayList<>();
                for (String line : rest) {
                    if (!line.startsWith("data:")) continue;
                    String value = line.substring(5);
                    data.add(value.startsWith(" ") ? value.substring(1) : value);
                }
                r = sse(data);
            } else if (name.endsWith(".events")) {
                r = rawSse(String.join("\n", rest));
            } else {
                throw new IllegalArgumentException("unknown fixture type (want .json, .sse or .events): " + p);
            }
            r = r.status(status).delayMs(delay).cutAfter(cut);
            for (Map.Entry<String, String> h : headers.entrySet()) r = r.header(h.getKey(), h.getValue());
            return r;
        }
    }

    /** One request as the stub saw it. Header names are lower-cased (the last value wins when repeated). */
    static final class Recorded {
        private final String method;
        private final String path;
        private final String query;
        private final Map<String, String> headers;
        private final String body;
        private final CountDownLatch gone = new CountDownLatch(1);
        private volatile int status;
        private final java.util.concurrent.atomic.AtomicLong sent = new java.util.concurrent.atomic.AtomicLong();
        private volatile JsonNode json;
        private volatile boolean parsed;
        private volatile String prompt;
        private volatile int cachedTokens;

        Recorded(String method, String path, String query, Map<String, String> headers, String body) {
            this.method = method;
            this.path = path;
            this.query = query;
            this.headers = Collections.unmodifiableMap(headers);
            this.body = body;
        }

        String method() {
            return method;
        }

        /** The full path with its /gh, /api or /copilot prefix, without the query. */
        String path() {
            return path;
        }

        /** The raw query string, or null. */
        String query() {
            return query;
        }

        Map<String, String> headers() {
            return headers;
        }

        /** The header's value (name in any case), or null. */
        String header(String name) {
            return headers.get(name.toLowerCase(Locale.ROOT));
        }

        String body() {
            return body;
        }

        /** The body parsed as JSON, or null when empty or not JSON. */
        JsonNode json() {
            if (!parsed) {
                json = parse(body);
                parsed = true;
            }
            return json;
        }

        /** The body as a form (url-encoded, or a flat JSON object), merged over the query's parameters. */
        Map<String, String> form() {
            Map<String, String> out = new LinkedHashMap<>(decodeForm(query));
            JsonNode j = json();
            if (j != null && j.isObject()) {
                j.properties().forEach(e -> out.put(e.getKey(), e.getValue().asText()));
            } else {
                out.putAll(decodeForm(body));
            }
            return out;
        }

        /** The prompt the stub's prompt cache saw in this body (see Prompt), or null when the cache is off or was not asked. */
        String prompt() {
            return prompt;
        }

        /** The cached input tokens the prompt cache computed for this body (0 when it reused nothing or is off). */
        int cachedTokens() {
            return cachedTokens;
        }

        void cache(String promptText, int tokens) {
            prompt = promptText;
            cachedTokens = tokens;
        }

        /** The status the stub answered (0 until the headers were sent). */
        int status() {
            return status;
        }

        void status(int s) {
            status = s;
        }

        /** Bytes of the body written (and flushed) to the client so far; counted by flood replies. */
        long bytesSent() {
            return sent.get();
        }

        void sent(long n) {
            sent.addAndGet(n);
        }

        /** True once writing the reply to this client failed: it disconnected. */
        boolean clientGone() {
            return gone.getCount() == 0;
        }

        boolean awaitClientGone(Duration timeout) throws InterruptedException {
            return gone.await(timeout.toNanos(), TimeUnit.NANOSECONDS);
        }

        void markClientGone() {
            gone.countDown();
        }

        boolean matches(String p) {
            String want = stripQuery(p);
            return path.equals(want) || !isPrefixed(want)
                && (path.equals("/copilot" + want) || path.equals("/gh" + want) || path.equals("/api" + want));
        }

        @Override
        public String toString() {
            return method + " " + path + (query == null ? "" : "?" + query) + " -> " + status + (clientGone() ? " (client gone)" : "");
        }
    }

    // ==== 10. Forward proxy ====

    /**
     * A minimal plain-HTTP forward proxy for testing HTTP(S)_PROXY support: absolute-form requests
     * ("GET http://127.0.0.1:P/x HTTP/1.1") are forwarded to 127.0.0.1/localhost targets, one request per
     * connection ("Connection: close"), the answer streamed back byte for byte; CONNECT opens a tunnel.
     * Other targets get 403. {@link #seen()} lists the request targets in order ("CONNECT host:port" for tunnels).
     */
    static final class Proxy implements AutoCloseable {
        private final List<String> seen = new CopyOnWriteArrayList<>();
        private final Set<Socket> open = ConcurrentHashMap.newKeySet();
        private volatile ServerSocket listener;
        private volatile boolean closed;

        Proxy start() throws IOException {
            return start(0);
        }

        Proxy start(int port) throws IOException {
            listener = new ServerSocket(port, 50, InetAddress.getByName("127.0.0.1"));
            Thread t = new Thread(this::acceptLoop, "stub-proxy-accept");
            t.setDaemon(true);
            t.start();
            return this;
        }

        int port() {
            return listener.getLocalPort();
        }

        String url() {
            return "http://127.0.0.1:" + port();
        }

        List<String> seen() {
            return List.copyOf(seen);
        }

        void clear() {
            seen.clear();
        }

        @Override
        public void close() {
            closed = true;
            closeQuietly(listener);
            open.forEach(Proxy::closeQuietly);
        }

        private void acceptLoop() {
            while (!closed) {
                try {
                    Socket s = listener.accept();
                    open.add(s);
                    Thread t = new Thread(() -> serve(s), "stub-proxy-conn");
                    t.setDaemon(true);
                    t.start();
                } catch (IOException e) {
                    if (!closed) System.err.println("StubUpstream.Proxy: accept failed: " + e);
                }
            }
        }

        private void serve(Socket client) {
            try (client) {
                InputStream in = new BufferedInputStream(client.getInputStream());
                OutputStream out = client.getOutputStream();
                String requestLine = readLine(in);
                if (requestLine == null || requestLine.isEmpty()) return;
                String[] parts = requestLine.split(" ");
                List<String[]> headers = readHeaders(in);
                if (parts.length != 3) {
                    answer(out, 400, "stub proxy: bad request line");
                    return;
                }
                if (parts[0].equalsIgnoreCase("CONNECT")) {
                    seen.add("CONNECT " + parts[1]);
                    tunnel(client, in, out, parts[1]);
                    return;
                }
                seen.add(parts[1]);
                URI target = URI.create(parts[1]);
                if (!"http".equalsIgnoreCase(target.getScheme()) || target.getHost() == null) {
                    answer(out, 400, "stub proxy: absolute-form http:// target required");
                } else if (!isLoopback(target.getHost())) {
                    answer(out, 403, "stub proxy: only 127.0.0.1 targets");
                } else {
                    forward(target, parts[0], headers, readBody(in, headers), out);
                }
            } catch (IOException e) {
                // The client or the target went away; the connection is closed either way.
            } finally {
                open.remove(client);
            }
        }

        private void forward(URI target, String method, List<String[]> headers, byte[] body, OutputStream out) throws IOException {
            try (Socket upstream = new Socket(target.getHost(), target.getPort() < 0 ? 80 : target.getPort())) {
                open.add(upstream);
                String pathAndQuery = (target.getRawPath() == null || target.getRawPath().isEmpty() ? "/" : target.getRawPath())
                    + (target.getRawQuery() == null ? "" : "?" + target.getRawQuery());
                StringBuilder head = new StringBuilder(method).append(' ').append(pathAndQuery).append(" HTTP/1.1\r\n");
                boolean hasHost = false;
                for (String[] h : headers) {
                    String name = h[0].toLowerCase(Locale.ROOT);
                    if (Set.of("connection", "proxy-connection", "proxy-authorization", "keep-alive", "transfer-encoding",
                        "content-length", "te", "upgrade").contains(name)) continue;
                    hasHost |= name.equals("host");
                    head.append(h[0]).append(": ").append(h[1]).append("\r\n");
                }
                if (!hasHost) head.append("Host: ").append(target.getRawAuthority()).append("\r\n");
                if (body.length > 0 || !Set.of("GET", "HEAD", "DELETE", "OPTIONS").contains(method)) {
                    head.append("Content-Length: ").append(body.length).append("\r\n");
                }
                head.append("Connection: close\r\n\r\n");
                OutputStream up = new BufferedOutputStream(upstream.getOutputStream());
                up.write(head.toString().getBytes(StandardCharsets.ISO_8859_1));
                up.write(body);
                up.flush();
                InputStream down = new BufferedInputStream(upstream.getInputStream());
                String statusLine = readLine(down);
                if (statusLine == null) {
                    answer(out, 502, "stub proxy: the target closed without answering");
                    return;
                }
                StringBuilder responseHead = new StringBuilder(statusLine).append("\r\n");
                for (String[] h : readHeaders(down)) {
                    String name = h[0].toLowerCase(Locale.ROOT);
                    if (name.equals("connection") || name.equals("keep-alive")) continue;
                    responseHead.append(h[0]).append(": ").append(h[1]).append("\r\n");
                }
                responseHead.append("Connection: close\r\n\r\n");
                out.write(responseHead.toString().getBytes(StandardCharsets.ISO_8859_1));
                out.flush();
                byte[] buffer = new byte[8192];
                for (int n; (n = down.read(buffer)) != -1; ) {
                    out.write(buffer, 0, n);
                    out.flush();
                }
            } finally {
                open.removeIf(Socket::isClosed);
            }
        }

        private void tunnel(Socket client, InputStream in, OutputStream out, String authority) throws IOException {
            int colon = authority.lastIndexOf(':');
            String host = colon < 0 ? authority : authority.substring(0, colon);
            if (!isLoopback(host) || colon < 0) {
                answer(out, 403, "stub proxy: only 127.0.0.1 targets");
                return;
            }
            try (Socket upstream = new Socket(host, Integer.parseInt(authority.substring(colon + 1)))) {
                open.add(upstream);
                out.write("HTTP/1.1 200 Connection Established\r\n\r\n".getBytes(StandardCharsets.ISO_8859_1));
                out.flush();
                Thread upward = new Thread(() -> {
                    try {
                        in.transferTo(upstream.getOutputStream());
                    } catch (IOException e) {
                        // One side closed; closing both below ends the other direction.
                    } finally {
                        closeQuietly(upstream);
                        closeQuietly(client);
                    }
                }, "stub-proxy-tunnel");
                upward.setDaemon(true);
                upward.start();
                upstream.getInputStream().transferTo(out);
            } finally {
                open.removeIf(Socket::isClosed);
            }
        }

        private static boolean isLoopback(String host) {
            return host.equals("127.0.0.1") || host.equalsIgnoreCase("localhost");
        }

        private static void answer(OutputStream out, int status, String message) throws IOException {
            byte[] body = message.getBytes(StandardCharsets.UTF_8);
            String head = "HTTP/1.1 " + status + " Stub Proxy\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
                + body.length + "\r\nConnection: close\r\n\r\n";
            out.write(head.getBytes(StandardCharsets.ISO_8859_1));
            out.write(body);
            out.flush();
        }

        private static byte[] readBody(InputStream in, List<String[]> headers) throws IOException {
            String length = headerValue(headers, "content-length");
            if (length != null) return in.readNBytes(Integer.parseInt(length.trim()));
            String encoding = headerValue(headers, "transfer-encoding");
            if (encoding == null || !encoding.toLowerCase(Locale.ROOT).contains("chunked")) return new byte[0];
            ByteArrayOutputStream body = new ByteArrayOutputStream();
            while (true) {
                String sizeLine = readLine(in);
                if (sizeLine == null) throw new IOException("stub proxy: EOF inside a chunked body");
                int size = Integer.parseInt(sizeLine.split(";", 2)[0].trim(), 16);
                if (size == 0) {
                    readHeaders(in);
                    return body.toByteArray();
                }
                body.write(in.readNBytes(size));
                readLine(in);
            }
        }

        private static String headerValue(List<String[]> headers, String name) {
            for (String[] h : headers) {
                if (h[0].equalsIgnoreCase(name)) return h[1];
            }
            return null;
        }

        private static List<String[]> readHeaders(InputStream in) throws IOException {
            List<String[]> headers = new ArrayList<>();
            for (String line; (line = readLine(in)) != null && !line.isEmpty(); ) {
                int colon = line.indexOf(':');
                if (colon > 0) headers.add(new String[] {line.substring(0, colon).trim(), line.substring(colon + 1).trim()});
            }
            return headers;
        }

        /** One CRLF- or LF-terminated line in ISO-8859-1, or null at EOF before any byte. */
        private static String readLine(InputStream in) throws IOException {
            ByteArrayOutputStream line = new ByteArrayOutputStream();
            int b;
            while ((b = in.read()) != -1 && b != '\n') line.write(b);
            if (b == -1 && line.size() == 0) return null;
            String s = line.toString(StandardCharsets.ISO_8859_1);
            return s.endsWith("\r") ? s.substring(0, s.length() - 1) : s;
        }

        private static void closeQuietly(AutoCloseable c) {
            try {
                if (c != null) c.close();
            } catch (Exception e) {
                // Closing an already broken socket: nothing left to release.
            }
        }
    }

    /** A Copilot on raw sockets beside the stub (which serves its catalog), for what an HTTP server cannot do: hang, hold back. */
    abstract static class RawCopilot implements AutoCloseable {
        final StubUpstream stub;
        final ServerSocket listener;
        final Set<Socket> open = ConcurrentHashMap.newKeySet();

        RawCopilot(StubUpstream stub, String name) throws IOException {
            this.stub = stub;
            listener = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
            Thread t = new Thread(() -> acceptLoop(name), name + "-accept");
            t.setDaemon(true);
            t.start();
        }

        /** For COPILOT_API_COPILOT_URL. */
        String url() {
            return "http://127.0.0.1:" + listener.getLocalPort();
        }

        @Override
        public void close() {
            Proxy.closeQuietly(listener);
            open.forEach(Proxy::closeQuietly);
        }

        private void acceptLoop(String name) {
            while (!listener.isClosed()) {
                try {
                    Socket s = listener.accept();
                    open.add(s);
                    Thread t = new Thread(() -> serve(s), name + "-conn");
                    t.setDaemon(true);
                    t.start();
                } catch (IOException e) {
                    // closed: the loop ends
                }
            }
        }

        abstract void serve(Socket client);
    }

    /**
     * A Copilot that never answers: requests are read and then left without a byte of answer, the way a hung
     * upstream behaves. GET .../models is answered with the stub's catalog so a server can start against it.
     * {@link #awaitClosed} tells when the caller closed a connection it was waiting on (the call was cancelled).
     */
    static final class Silent extends RawCopilot {
        private final List<String> seen = new CopyOnWriteArrayList<>();
        private final AtomicInteger closed = new AtomicInteger();
        private volatile boolean hangCatalog;

        Silent(StubUpstream stub) throws IOException {
            super(stub, "stub-silent");
        }

        /** Leaves GET .../models unanswered too. */
        Silent hangCatalog() {
            hangCatalog = true;
            return this;
        }

        /** "METHOD /path" of each request left unanswered, in arrival order. */
        List<String> seen() {
            return List.copyOf(seen);
        }

        /** True once {@code n} unanswered connections were closed by the caller; false on timeout. */
        boolean awaitClosed(int n, Duration timeout) throws InterruptedException {
            long end = System.nanoTime() + timeout.toNanos();
            while (closed.get() < n && System.nanoTime() < end) Thread.sleep(20);
            return closed.get() >= n;
        }

        int closedCount() {
            return closed.get();
        }

        @Override
        void serve(Socket client) {
            try (client) {
                InputStream in = new BufferedInputStream(client.getInputStream());
                String requestLine = Proxy.readLine(in);
                if (requestLine == null || requestLine.isEmpty()) return;
                String[] parts = requestLine.split(" ");
                Proxy.readBody(in, Proxy.readHeaders(in));
                if (!hangCatalog && parts[0].equals("GET") && parts[1].endsWith("/models")) {
                    answerCatalog(client.getOutputStream());
                    return;
                }
                seen.add(parts[0] + " " + parts[1]);
                while (in.read() >= 0) {
                    continue;
                }
                closed.incrementAndGet();
            } catch (IOException e) {
                closed.incrementAndGet();
            } finally {
                open.remove(client);
            }
        }

        private void answerCatalog(OutputStream out) throws IOException {
            ObjectNode o = obj();
            o.set("data", stub.snapshot(stub.models));
            o.put("object", "list");
            byte[] body = o.toString().getBytes(StandardCharsets.UTF_8);
            out.write(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + body.length
                + "\r\nConnection: close\r\n\r\n").getBytes(StandardCharsets.ISO_8859_1));
            out.write(body);
            out.flush();
        }
    }

    /**
     * A Copilot whose stream waits at a gate: the catalog comes from the stub; a POST is answered 200 with an event
     * stream, the scripted head is sent at once, and the tail only after {@link #open()} (then the connection
     * closes). The test sees the head's effect before it lets the tail go, so a stream held back shows as a wait
     * that never ends, not as a timing. It also tells when copilot-api closed the connection while at the gate.
     */
    static final class Gated extends RawCopilot {
        private volatile String head = "";
        private volatile String tail = "";
        private volatile CountDownLatch gate = new CountDownLatch(1);
        private volatile CountDownLatch headSent = new CountDownLatch(1);
        private volatile CountDownLatch closedAtGate = new CountDownLatch(1);

        Gated(StubUpstream stub) throws IOException {
            super(stub, "stub-gated");
        }

        /** The next POST's answer: head (raw event-stream text) at once, tail after open(); a new gate. */
        Gated script(String head, String tail) {
            this.head = head;
            this.tail = tail;
            gate = new CountDownLatch(1);
            headSent = new CountDownLatch(1);
            closedAtGate = new CountDownLatch(1);
            return this;
        }

        /** Lets the tail go. */
        void open() {
            gate.countDown();
        }

        boolean awaitHeadSent(Duration timeout) throws InterruptedException {
            return headSent.await(timeout.toNanos(), TimeUnit.NANOSECONDS);
        }

        /** True once copilot-api closed the connection while the stream waited at the gate. */
        boolean awaitClosedAtGate(Duration timeout) throws InterruptedException {
            return closedAtGate.await(timeout.toNanos(), TimeUnit.NANOSECONDS);
        }

        @Override
        public void close() {
            gate.countDown();
            super.close();
        }

        @Override
        void serve(Socket client) {
            try (client) {
                InputStream in = new BufferedInputStream(client.getInputStream());
                String requestLine = Proxy.readLine(in);
                if (requestLine == null || requestLine.isEmpty()) return;
                Proxy.readBody(in, Proxy.readHeaders(in));
                OutputStream out = client.getOutputStream();
                if (requestLine.startsWith("GET ") && requestLine.split(" ")[1].endsWith("/models")) {
                    ObjectNode o = obj();
                    o.set("data", stub.snapshot(stub.models));
                    o.put("object", "list");
                    byte[] body = o.toString().getBytes(StandardCharsets.UTF_8);
                    out.write(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + body.length
                        + "\r\nConnection: close\r\n\r\n").getBytes(StandardCharsets.ISO_8859_1));
                    out.write(body);
                    out.flush();
                    return;
                }
                CountDownLatch myGate = gate;
                CountDownLatch closed = closedAtGate;
                out.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n".getBytes(StandardCharsets.ISO_8859_1));
                out.write(head.getBytes(StandardCharsets.UTF_8));
                out.flush();
                headSent.countDown();
                Thread watch = new Thread(() -> {
                    try {
                        while (in.read() >= 0) {
                            continue;
                        }
                    } catch (IOException e) {
                        // reset: closed as well
                    }
                    if (myGate.getCount() > 0) closed.countDown();
                }, "stub-gated-watch");
                watch.setDaemon(true);
                watch.start();
                myGate.await();
                out.write(tail.getBytes(StandardCharsets.UTF_8));
                out.flush();
            } catch (IOException e) {
                // copilot-api went away; the watch has seen it
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } finally {
                open.remove(client);
            }
        }
    }

    // ==== 11. Small utilities ====

    static ObjectNode obj() {
        return JSON.createObjectNode();
    }

    /** {"error":{"message":M[,"type":T][,"code":C][,"param":P]}}. */
    static String errorBody(String message, String type, String code, String param) {
        ObjectNode root = obj();
        ObjectNode e = root.putObject("error");
        e.put("message", message);
        if (type != null) e.put("type", type);
        if (code != null) e.put("code", code);
        if (param != null) e.put("param", param);
        return root.toString();
    }

    static JsonNode parse(String text) {
        if (text == null || text.isBlank()) return null;
        try {
            return JSON.readTree(text);
        } catch (JsonProcessingException e) {
            return null;
        }
    }

    /** The text of a content value: a string, text parts joined, or a nested content/output. */
    static String textOf(JsonNode n) {
        if (n == null || n.isMissingNode() || n.isNull()) return "";
        if (n.isTextual()) return n.asText();
        if (n.isArray()) {
            StringBuilder sb = new StringBuilder();
            for (JsonNode part : n) sb.append(textOf(part));
            return sb.toString();
        }
        if (n.isObject()) {
            if (n.has("text")) return n.path("text").asText();
            if (n.has("content")) return textOf(n.get("content"));
            return "";
        }
        return n.asText();
    }

    /** A string cut into up to 4 pieces (at least 2 when it has 2 characters or more). */
    static List<String> pieces(String s) {
        List<String> out = new ArrayList<>();
        if (s.isEmpty()) return out;
        int size = Math.max(1, (s.length() + 3) / 4);
        for (int i = 0; i < s.length(); i += size) out.add(s.substring(i, Math.min(s.length(), i + size)));
        return out;
    }

    private static boolean containsText(JsonNode array, String value) {
        for (JsonNode e : array) {
            if (e.asText().equals(value)) return true;
        }
        return false;
    }

    private static JsonNode snapshot(JsonNode node) {
        synchronized (node) {
            return node.deepCopy();
        }
    }

    private static long nowSeconds() {
        return System.currentTimeMillis() / 1000;
    }

    private static String stripQuery(String path) {
        int q = path.indexOf('?');
        return q < 0 ? path : path.substring(0, q);
    }

    private static String urlEncode(String s) {
        return URLEncoder.encode(s, StandardCharsets.UTF_8);
    }

    private static Map<String, String> decodeForm(String form) {
        Map<String, String> out = new LinkedHashMap<>();
        if (form == null || form.isBlank()) return out;
        for (String pair : form.split("&")) {
            if (pair.isEmpty()) continue;
            int eq = pair.indexOf('=');
            String key = eq < 0 ? pair : pair.substring(0, eq);
            String value = eq < 0 ? "" : pair.substring(eq + 1);
            out.put(URLDecoder.decode(key, StandardCharsets.UTF_8), URLDecoder.decode(value, StandardCharsets.UTF_8));
        }
        return out;
    }

    private static ThreadFactory daemonThreads(String name) {
        AtomicInteger n = new AtomicInteger();
        return r -> {
            Thread t = new Thread(r, name + "-" + n.incrementAndGet());
            t.setDaemon(true);
            return t;
        };
    }

    // ==== main: standalone stub ====

    public static void main(String[] args) throws Exception {
        int port = 0;
        AccountKind kind = AccountKind.LEGACY;
        boolean promptCache = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--usage-based" -> kind = AccountKind.USAGE_BASED;
                case "--prompt-cache" -> promptCache = true;
                case "--port" -> {
                    if (i + 1 >= args.length) {
                        System.err.println("--port needs a number");
                        System.exit(2);
                    }
                    port = Integer.parseInt(args[++i]);
                }
                case "-h", "--help" -> {
                    System.out.println("Usage: StubUpstream [--port N] [--usage-based] [--prompt-cache]   (default 0: a free port; a legacy account;");
                    System.out.println("       no cached tokens; --prompt-cache reports them for the prefix a body shares with an earlier one)");
                    System.out.println("Serves a fake GitHub + Copilot API until killed; prints the env lines to use it.");
                    return;
                }
                default -> {
                    System.err.println("unknown argument: " + args[i] + " (try --help)");
                    System.exit(2);
                }
            }
        }
        StubUpstream stub = start(port).accountKind(kind).promptCache(promptCache).verbose(true);
        Runtime.getRuntime().addShutdownHook(new Thread(stub::close, "stub-upstream-shutdown"));
        stub.env().forEach((k, v) -> System.out.println(k + "=" + v));
        System.out.println("COPILOT_API_GITHUB_TOKEN=" + VALID_GITHUB_TOKEN);
        System.out.flush();
        new CountDownLatch(1).await();
    }
}
