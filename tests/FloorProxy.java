///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DEPS io.javalin:javalin:7.2.3
//DEPS org.eclipse.jetty:jetty-client:12.1.12
//DEPS org.slf4j:slf4j-simple:2.0.17
//SOURCES StubUpstream.java
//JAVA_OPTIONS -XX:+UseSerialGC -Xms32m -Xmx512m
//DESCRIPTION The least a proxy on copilot-api's stack can do: Javalin in, Jetty's client out, nothing else. A benchmark floor, not a tool.

package copilotapi;

import io.javalin.Javalin;
import org.eclipse.jetty.client.BytesRequestContent;
import org.eclipse.jetty.client.ContentResponse;
import org.eclipse.jetty.client.HttpClient;
import org.eclipse.jetty.client.Request;

/**
 * What copilot-api's fixed stack (Javalin on Jetty, Jetty's HTTP client, the same JVM options) costs per request
 * before any of copilot-api's own work: it forwards POST /v1/chat/completions to the stub's Copilot as it came, with
 * a Copilot token exchanged once, and answers GET /v1/models so the benchmark sees it ready. No JSON parsing, no
 * translation, no checks, no log, no store, no streaming (a stream is buffered whole). Only for measuring:
 * <pre>
 *   ./jbang tests/Benchmark.java --side-by-side --stub-port 18080 --target http://127.0.0.1:4343 &amp;
 *   ./jbang tests/FloorProxy.java http://127.0.0.1:18080 4343
 * </pre>
 */
class FloorProxy {
    public static void main(String... args) throws Exception {
        String stub = args[0];
        int port = Integer.parseInt(args[1]);
        HttpClient client = new HttpClient();
        client.setMaxConnectionsPerDestination(4096);
        client.start();
        String answer = client.newRequest(stub + "/api/copilot_internal/v2/token")
            .headers(h -> h.put("authorization", "token " + StubUpstream.VALID_GITHUB_TOKEN)).send().getContentAsString();
        String token = new com.fasterxml.jackson.databind.ObjectMapper().readTree(answer).path("token").asText();
        Javalin.create(config -> {
            config.routes.post("/v1/chat/completions", ctx -> {
                ContentResponse r = copilot(client, stub, token, "/chat/completions").method("POST")
                    .body(new BytesRequestContent(ctx.bodyAsBytes())).send();
                ctx.status(r.getStatus()).contentType(r.getMediaType() == null ? "application/json" : r.getMediaType()).result(r.getContent());
            });
            config.routes.get("/v1/models", ctx -> ctx.contentType("application/json")
                .result(copilot(client, stub, token, "/models").send().getContent()));
        }).start("127.0.0.1", port);
    }

    static Request copilot(HttpClient client, String stub, String token, String path) {
        return client.newRequest(stub + "/copilot" + path).headers(h -> h.put("authorization", "Bearer " + token)
            .put("editor-version", "vscode/1.99.0").put("content-type", "application/json"));
    }
}
