package copilotapi;

import static copilotapi.CopilotApiTests.json;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

/**
 * Upstream faults before the model call, on every model route, streamed and not. Copilot's model catalog failing while
 * copilot-api has none cached (a 5xx, a hang, a 401 or 403, a 429, the billing notice): the request gets its API's error
 * shape with a status that says what happened (502 for a bad answer, 504 for none in time, 403 and 429 kept, 429 with
 * its retry-after, and a 401 that survived the token refresh a 502 as on every call), a message that names the model
 * list, and no longer wait than one catalog timeout; once the fault ends, the very next request is served. GitHub's
 * token exchange failing while the Copilot token has expired: a 502 that names the exchange (a 429 when GitHub rate-limits
 * it, with GitHub's retry-after honoured), and service again within the token's back-off cap once GitHub answers.
 */
final class CatalogFaultTests {
    private CatalogFaultTests() {
    }

    /** A second for Copilot's first byte, so that a hung catalog fails quickly; the rest as in a real run. */
    static final CopilotApi.Timeouts SHORT = new CopilotApi.Timeouts(Duration.ofSeconds(1), Duration.ofSeconds(120), Duration.ofMinutes(10),
        Duration.ofSeconds(3), Duration.ofSeconds(15));

    enum Shape { OPENAI, ANTHROPIC, GOOGLE }

    /** A request to one route (body null for a GET); whether it needs the catalog, and a fresh Copilot token. */
    record Route(String name, String path, String body, Shape shape, boolean needsCatalog, boolean callsCopilot) {
        Route(String name, String path, String body, Shape shape) {
            this(name, path, body, shape, true, true);
        }

        HttpResponse<String> send(CopilotApiTests.Harness h) throws Exception {
            return body == null ? h.get(path) : h.post(path, body);
        }
    }

    /** What the catalog answers, the status the client should get, and words its message must carry. */
    record Fault(String name, StubUpstream.Reply reply, int status, String cause, String retryAfter) {}

    static final String CHAT = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    static final String GEMINI = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]}]}";

    static final List<Route> ROUTES = List.of(
        new Route("chat", "/v1/chat/completions", "{\"model\":\"gpt-4.1\"," + CHAT + "}", Shape.OPENAI),
        new Route("chat streamed", "/v1/chat/completions", "{\"model\":\"gpt-4.1\",\"stream\":true," + CHAT + "}", Shape.OPENAI),
        new Route("messages", "/v1/messages", "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":50," + CHAT + "}", Shape.ANTHROPIC),
        new Route("messages streamed", "/v1/messages", "{\"model\":\"claude-sonnet-4.5\",\"max_tokens\":50,\"stream\":true," + CHAT + "}",
            Shape.ANTHROPIC),
        // Copilot's own count failing falls back to the estimate
        new Route("count_tokens", "/v1/messages/count_tokens", "{\"model\":\"claude-sonnet-4.5\"," + CHAT + "}", Shape.ANTHROPIC, true, false),
        new Route("responses", "/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"input\":\"hi\"}", Shape.OPENAI),
        new Route("responses streamed", "/v1/responses", "{\"model\":\"gpt-5.1-codex\",\"stream\":true,\"input\":\"hi\"}", Shape.OPENAI),
        new Route("embeddings", "/v1/embeddings", "{\"model\":\"text-embedding-3-small\",\"input\":\"hi\"}", Shape.OPENAI, false, true),
        new Route("model list", "/v1/models", null, Shape.OPENAI, true, false),
        new Route("generateContent", "/v1beta/models/gemini-2.5-pro:generateContent", GEMINI, Shape.GOOGLE),
        new Route("streamGenerateContent", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", GEMINI, Shape.GOOGLE),
        new Route("countTokens", "/v1beta/models/gemini-2.5-pro:countTokens", GEMINI, Shape.GOOGLE, true, false),
        new Route("Gemini model list", "/v1beta/models", null, Shape.GOOGLE, true, false));

    static final List<Fault> FAULTS = List.of(
        new Fault("503", StubUpstream.Reply.error(503, "service_unavailable", "Service Unavailable"), 502,
            "Copilot's model list answered 503", null),
        new Fault("500 page", StubUpstream.Reply.raw(500, "text/html", "<html><body>Internal Server Error</body></html>"), 502,
            "Copilot's model list answered 500", null),
        new Fault("hang", StubUpstream.Reply.json(200, "{\"object\":\"list\",\"data\":[]}").delayMs(3000), 504,
            "Copilot's model list did not answer in time", null),
        new Fault("401", StubUpstream.Reply.error(401, "unauthorized", "unauthorized: token expired"), 502,
            "Copilot's model list answered 401", null),
        new Fault("403", StubUpstream.Reply.error(403, "forbidden", "access to this endpoint is forbidden"), 403,
            "Copilot's model list answered 403", null),
        new Fault("429", StubUpstream.Reply.json(429, "{\"error\":{\"message\":\"rate limited\",\"code\":\"rate_limited\"}}",
            Map.of("retry-after", "7")), 429, "Copilot's model list answered 429", "7"),
        new Fault("billing notice", StubUpstream.Reply.json(200, notice()), 502, "Copilot gave no model catalog", null));

    static String notice() {
        try {
            return CopilotApi.JSON.writeValueAsString(StubUpstream.BILLING_NOTICE);
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    /** Each fault on each route, on a copilot-api started while the fault was on (so it has no catalog to fall back on). */
    @TestFactory
    List<DynamicTest> aCatalogFaultIsReportedInTheCallersShapeAndTheNextRequestAfterItIsServed() {
        List<DynamicTest> tests = new ArrayList<>();
        for (Fault fault : FAULTS) {
            for (Route route : ROUTES) {
                tests.add(DynamicTest.dynamicTest(fault.name() + " on " + route.name(), () -> check(fault, route)));
            }
        }
        return tests;
    }

    static void check(Fault fault, Route route) throws Exception {
        StubUpstream stub = StubUpstream.start().catalogFault(fault.reply());
        try (CopilotApiTests.Harness h = new CopilotApiTests.Harness(stub, Map.of(), o -> { }, CopilotApi.Operator.Controls.none(), SHORT)) {
            int before = stub.count("/models");
            HttpResponse<String> r = route.send(h);
            if (!route.needsCatalog()) {
                assertEquals(200, r.statusCode(), "a route that needs no catalog is served meanwhile: " + r.body());
            } else {
                assertError(route, r, fault.status(), fault.cause(), fault.retryAfter(), fault.name());
                if (fault.name().equals("hang")) {
                    assertEquals(1, stub.count("/models") - before, "one wait for the hung catalog, not one per lookup of the request");
                }
            }
            stub.catalogFault(null);
            HttpResponse<String> next = route.send(h);
            assertEquals(200, next.statusCode(), "the first request after the fault is served: " + next.body());
            if (route.body() != null && route.body().contains("\"stream\":true")) assertTrue(next.body().contains("data: "), next.body());
        }
    }

    /**
     * Each route while the Copilot token has expired and GitHub's exchange answers 503 (the catalog was read at start):
     * a route that calls Copilot fails with a 502 naming the exchange, the others are served; once GitHub answers again,
     * a request within the back-off cap (1 s here) is served.
     */
    @TestFactory
    List<DynamicTest> aTokenExchangeFailureIsReportedInTheCallersShapeAndServiceResumesWithinTheCap() {
        List<DynamicTest> tests = new ArrayList<>();
        for (Route route : ROUTES) tests.add(DynamicTest.dynamicTest("token exchange 503 on " + route.name(), () -> checkTokenOutage(route)));
        return tests;
    }

    static void checkTokenOutage(Route route) throws Exception {
        try (CopilotApiTests.Harness h = new CopilotApiTests.Harness(StubUpstream.start(), Map.of(), o -> { }, CopilotApi.Operator.Controls.none(),
                SHORT)) {
            h.tokens.pace(CopilotApiTests.TokenLifecycleTests.SHORT_PACING);
            h.stub.expireCopilotTokens();
            h.stub.tokenExchangeStatus(503);
            HttpResponse<String> r = route.send(h);
            if (route.callsCopilot()) {
                assertError(route, r, 502, "Copilot token exchange answered 503", null, "token exchange 503");
            } else {
                assertEquals(200, r.statusCode(), "a route that needs no fresh token is served meanwhile: " + r.body());
            }
            h.stub.tokenExchangeStatus(0);
            long start = System.nanoTime();
            assertEquals(200, untilServed(h, route, Duration.ofSeconds(5)), "served again once GitHub answers");
            long ms = Duration.ofNanos(System.nanoTime() - start).toMillis();
            assertTrue(ms <= 1500, "served within the back-off cap (1 s) of GitHub's recovery, took " + ms + " ms");
        }
    }

    /**
     * Each route while the Copilot token has expired and GitHub's exchange answers 429, with a retry-after of 2 s and
     * without one: a route that calls Copilot gets a 429 in its API's shape (rate_limit_error, RESOURCE_EXHAUSTED) that
     * names the exchange, with GitHub's retry-after (and Google's RetryInfo) when GitHub gave one; while that wait runs
     * GitHub is not asked again, and once it has passed and GitHub answers, the request is served.
     */
    @TestFactory
    List<DynamicTest> aRateLimitedTokenExchangeIsA429AndServiceResumesOnceTheLimitClears() {
        List<DynamicTest> tests = new ArrayList<>();
        for (String retryAfter : new String[] {"2", null}) {
            for (Route route : ROUTES) {
                String name = "token exchange 429 " + (retryAfter == null ? "without" : "with") + " retry-after on " + route.name();
                tests.add(DynamicTest.dynamicTest(name, () -> checkTokenRateLimit(route, retryAfter)));
            }
        }
        return tests;
    }

    static void checkTokenRateLimit(Route route, String retryAfter) throws Exception {
        try (CopilotApiTests.Harness h = new CopilotApiTests.Harness(StubUpstream.start(), Map.of(), o -> { }, CopilotApi.Operator.Controls.none(),
                SHORT)) {
            h.tokens.pace(CopilotApiTests.TokenLifecycleTests.SHORT_PACING);
            h.stub.expireCopilotTokens();
            h.stub.tokenExchangeStatus(429, retryAfter);
            long limited = System.nanoTime();
            HttpResponse<String> r = route.send(h);
            if (!route.callsCopilot()) {
                assertEquals(200, r.statusCode(), "a route that needs no fresh token is served meanwhile: " + r.body());
                return;
            }
            String fault = "token exchange 429" + (retryAfter == null ? "" : " retry-after " + retryAfter);
            assertError(route, r, 429, "GitHub rate-limited the Copilot token exchange", retryAfter, fault);
            assertRateLimitShape(route, r, retryAfter, fault);
            if (retryAfter != null) {
                // past the first back-off (250 ms here) but within GitHub's 2 s: the answer stays a 429, GitHub is not asked
                int exchanges = h.stub.count("/copilot_internal/v2/token");
                Thread.sleep(500);
                HttpResponse<String> again = route.send(h);
                assertEquals(429, again.statusCode(), "still within GitHub's retry-after: " + again.body());
                long left = Long.parseLong(again.headers().firstValue("retry-after").orElse("-1"));
                assertTrue(left >= 1 && left <= 2, "the wait that is left of GitHub's: " + left);
                assertTrue(again.body().contains("rate-limited the Copilot token exchange"), again.body());
                assertEquals(exchanges, h.stub.count("/copilot_internal/v2/token"), "no exchange while GitHub's retry-after runs");
            }
            h.stub.tokenExchangeStatus(0);
            assertEquals(200, untilServed(h, route, Duration.ofSeconds(6)), "served again once the limit clears");
            long ms = Duration.ofNanos(System.nanoTime() - limited).toMillis();
            long bound = retryAfter == null ? 1500 : 2000 + 1500;
            assertTrue(ms <= bound, "served within the back-off cap of the limit's end (" + bound + " ms), took " + ms + " ms");
        }
    }

    /** Sends the route's request every 50 ms until it is served or the time is up; the last status. */
    static int untilServed(CopilotApiTests.Harness h, Route route, Duration within) throws InterruptedException {
        return CopilotApiTests.eventually(within, () -> {
            try {
                return route.send(h).statusCode();
            } catch (Exception e) {
                throw new AssertionError(e);
            }
        }, s -> s == 200);
    }

    /** A rate limit in each API's words: OpenAI's and Anthropic's rate_limit_error, Google's RESOURCE_EXHAUSTED with RetryInfo. */
    static void assertRateLimitShape(Route route, HttpResponse<String> r, String retryAfter, String fault) {
        JsonNode error = json(r.body()).path("error");
        String where = fault + " on " + route.path() + ": " + r.body();
        switch (route.shape()) {
            case OPENAI, ANTHROPIC -> assertEquals("rate_limit_error", error.path("type").asText(), where);
            case GOOGLE -> {
                assertEquals("RESOURCE_EXHAUSTED", error.path("status").asText(), where);
                JsonNode info = error.path("details").path(0);
                if (retryAfter == null) {
                    assertTrue(info.isMissingNode(), "no RetryInfo without GitHub's wait: " + where);
                } else {
                    assertEquals("type.googleapis.com/google.rpc.RetryInfo", info.path("@type").asText(), where);
                    assertEquals(retryAfter + "s", info.path("retryDelay").asText(), where);
                }
            }
        }
        if (retryAfter == null) assertTrue(r.headers().firstValue("retry-after").isEmpty(), "no retry-after GitHub did not give: " + where);
    }

    static void assertError(Route route, HttpResponse<String> r, int status, String cause, String retryAfter, String fault) {
        String where = fault + " on " + route.path() + ": " + r.body();
        assertEquals(status, r.statusCode(), where);
        JsonNode body = json(r.body());
        String message = switch (route.shape()) {
            case OPENAI -> {
                assertTrue(body.path("error").path("type").isTextual(), where);
                yield body.path("error").path("message").asText();
            }
            case ANTHROPIC -> {
                assertEquals("error", body.path("type").asText(), where);
                assertEquals(anthropicType(status), body.path("error").path("type").asText(), where);
                yield body.path("error").path("message").asText();
            }
            case GOOGLE -> {
                assertEquals(status, body.path("error").path("code").asInt(), where);
                assertFalse(body.path("error").path("status").asText().isEmpty(), where);
                yield body.path("error").path("message").asText();
            }
        };
        assertTrue(message.contains(cause), "the message names the cause (" + cause + "): " + where);
        assertFalse(r.body().contains(StubUpstream.VALID_GITHUB_TOKEN), "no token in the error");
        if (retryAfter != null) assertEquals(retryAfter, r.headers().firstValue("retry-after").orElse(null), "Copilot's retry-after: " + where);
    }

    /** Anthropic's error type for each status these faults give (the API's documented table). */
    static String anthropicType(int status) {
        return switch (status) {
            case 403 -> "permission_error";
            case 429 -> "rate_limit_error";
            case 504 -> "timeout_error";
            default -> "api_error";
        };
    }
}
