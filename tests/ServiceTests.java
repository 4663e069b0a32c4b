package copilotapi;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.StringReader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import javax.xml.parsers.DocumentBuilder;
import javax.xml.parsers.DocumentBuilderFactory;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.w3c.dom.Document;
import org.w3c.dom.Element;
import org.w3c.dom.Node;
import org.xml.sax.InputSource;

/**
 * `service` beyond systemd: the launchd agent (macOS) and the logon task (Windows) that `install --dry-run --os ...`
 * prints, checked as text against their formats (nothing here runs launchd or the Task Scheduler), and `status` and
 * `logs` where no service manager runs. The systemd unit and its command line are in CopilotApiTests.ExportTests.
 */
class ServiceTests {
    static final String MAC_HOME = "/Users/A User";
    static final String MAC_JAVA = "/Library/Java/JavaVirtualMachines/temurin 17.jdk/Contents/Home/bin/java";
    static final String WIN_HOME = "C:\\Users\\A User";
    static final String WIN_JAVA = "C:\\Program Files\\Eclipse Adoptium\\jdk-17\\bin\\java.exe";
    static final String TASK_NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task";

    /** A shell's environment: a proxy with a password, a CA file, and a variable that must not reach the service. */
    static Map<String, String> shell(Map<String, String> home) {
        Map<String, String> env = new HashMap<>(home);
        env.put("HTTPS_PROXY", "http://me:pa%40ss@proxy.example:3128");
        env.put("SSL_CERT_FILE", "/etc/ssl/corp.pem");
        env.put("UNRELATED_SECRET", "not-for-the-service");
        return env;
    }

    static CopilotApiTests.CliTests.Run service(Map<String, String> env, String... args) throws Exception {
        List<String> all = new ArrayList<>(List.of("service"));
        all.addAll(List.of(args));
        CopilotApiTests.CliTests.Run r = CopilotApiTests.CliTests.cli(env, all.toArray(String[]::new));
        System.out.print(r.out() + r.err());
        return r;
    }

    static String between(String text, String from, String to) {
        int start = text.indexOf(from);
        int end = text.indexOf(to, start);
        assertTrue(start >= 0 && end > start, "no " + from + " ... " + to + " in:\n" + text);
        return text.substring(start, end + to.length());
    }

    static Document parse(String xml, boolean namespaces) throws Exception {
        DocumentBuilderFactory f = DocumentBuilderFactory.newInstance();
        f.setNamespaceAware(namespaces);
        f.setValidating(false);
        // the plist DOCTYPE names Apple's DTD by URL: read the declaration, never fetch it
        f.setFeature("http://apache.org/xml/features/nonvalidating/load-external-dtd", false);
        DocumentBuilder b = f.newDocumentBuilder();
        b.setErrorHandler(null);
        return b.parse(new InputSource(new StringReader(xml)));
    }

    static List<Element> children(Element e) {
        List<Element> out = new ArrayList<>();
        for (Node n = e.getFirstChild(); n != null; n = n.getNextSibling()) {
            if (n instanceof Element c) out.add(c);
            else if (n.getNodeType() == Node.TEXT_NODE && !n.getTextContent().isBlank()) fail("stray text in <" + e.getTagName() + ">: " + n.getTextContent());
        }
        return out;
    }

    /**
     * A property list as plutil reads one: a dict is key, value, key, value... with unique keys; values are the
     * plist DTD's types; integers are integers; true and false are empty. Answers the dict as a map.
     */
    static Map<String, Element> plistDict(Element dict) {
        assertEquals("dict", dict.getTagName());
        List<Element> items = children(dict);
        assertEquals(0, items.size() % 2, "a dict alternates key and value");
        Map<String, Element> out = new LinkedHashMap<>();
        for (int i = 0; i < items.size(); i += 2) {
            assertEquals("key", items.get(i).getTagName(), "a dict's odd elements are keys");
            String key = items.get(i).getTextContent();
            assertFalse(out.containsKey(key), "duplicate key " + key);
            plistValue(items.get(i + 1));
            out.put(key, items.get(i + 1));
        }
        return out;
    }

    static void plistValue(Element v) {
        switch (v.getTagName()) {
            case "string", "date", "data", "real" -> {
                for (Node n = v.getFirstChild(); n != null; n = n.getNextSibling()) {
                    assertEquals(Node.TEXT_NODE, n.getNodeType(), "text only in <" + v.getTagName() + ">");
                }
            }
            case "integer" -> Long.parseLong(v.getTextContent().strip());
            case "true", "false" -> assertFalse(v.hasChildNodes(), "<" + v.getTagName() + "/> is empty");
            case "array" -> children(v).forEach(ServiceTests::plistValue);
            case "dict" -> plistDict(v);
            default -> fail("not a plist type: <" + v.getTagName() + ">");
        }
    }

    static List<String> strings(Element array) {
        assertEquals("array", array.getTagName());
        List<String> out = new ArrayList<>();
        for (Element s : children(array)) {
            assertEquals("string", s.getTagName());
            out.add(s.getTextContent());
        }
        return out;
    }

    /** The checkers refuse what plutil and the Task Scheduler would. */
    @Test
    void theFormatCheckersRefuseMalformedFiles() throws Exception {
        String head = "<?xml version=\"1.0\"?><plist version=\"1.0\">";
        plistDict(children(parse(head + "<dict><key>a</key><string>x</string></dict></plist>", false).getDocumentElement()).get(0));
        for (String bad : List.of("<dict><key>a</key></dict>", "<dict><key>a</key><string>x</string><key>a</key><true/></dict>",
                "<dict><key>a</key><str>x</str></dict>", "<dict><key>a</key><integer>x</integer></dict>", "<dict><string>a</string><true/></dict>")) {
            Element dict = children(parse(head + bad + "</plist>", false).getDocumentElement()).get(0);
            assertThrows(Throwable.class, () -> plistDict(dict), bad);
        }
        Element task = parse("<Task xmlns=\"" + TASK_NAMESPACE + "\"><Settings/><Settings/></Task>", true).getDocumentElement();
        assertThrows(Throwable.class, () -> only(task, "Settings"), "two of a kind");
        assertThrows(Throwable.class, () -> only(task, "Actions"), "none");
        Element foreign = parse("<Task xmlns=\"urn:other\"><Actions/></Task>", true).getDocumentElement();
        assertThrows(Throwable.class, () -> only(foreign, "Actions"), "another namespace");
    }

    @Test
    void aLaunchdAgentIsAPropertyListWithAbsoluteJavaTheJarAndTheStartOptions() throws Exception {
        Map<String, String> env = shell(Map.of("HOME", MAC_HOME));
        CopilotApiTests.CliTests.Run r = service(env, "install", "--dry-run", "--os", "macos", "--java", MAC_JAVA,
            "--port", "4242", "--api-key", "k-mac", "--github-token", StubUpstream.VALID_GITHUB_TOKEN);
        assertEquals(0, r.exit(), r.err());
        String plistPath = MAC_HOME + "/Library/LaunchAgents/local.copilot-api.plist";
        assertTrue(r.out().contains("# " + plistPath + " (readable by you only)\n"), r.out());
        assertFalse(r.out().contains("k-mac") || r.out().contains(StubUpstream.VALID_GITHUB_TOKEN) || r.out().contains("pa%40ss"),
            "no secret shown: " + r.out());
        assertFalse(r.out().contains("UNRELATED_SECRET"), r.out());

        Document doc = parse(between(r.out(), "<?xml", "</plist>"), false);
        assertEquals("-//Apple//DTD PLIST 1.0//EN", doc.getDoctype().getPublicId());
        assertEquals("http://www.apple.com/DTDs/PropertyList-1.0.dtd", doc.getDoctype().getSystemId());
        Element root = doc.getDocumentElement();
        assertEquals("plist", root.getTagName());
        assertEquals("1.0", root.getAttribute("version"));
        assertEquals(1, children(root).size(), "a plist holds one value");
        Map<String, Element> agent = plistDict(children(root).get(0));

        assertEquals("local.copilot-api", agent.get("Label").getTextContent());
        String data = MAC_HOME + "/.local/share/copilot-api";
        assertEquals(List.of(MAC_JAVA, "-XX:+UseSerialGC", "-Xms32m", "-Xmx512m", "-jar", data + "/copilot-api.jar", "start", "--port", "4242"),
            strings(agent.get("ProgramArguments")), "one argument per string: spaces need no quoting");
        assertEquals("true", agent.get("RunAtLoad").getTagName());
        assertEquals("false", plistDict(agent.get("KeepAlive")).get("SuccessfulExit").getTagName(), "restarted when it fails, not after a clean stop");
        String log = MAC_HOME + "/Library/Logs/copilot-api.log";
        assertEquals(log, agent.get("StandardOutPath").getTextContent());
        assertEquals(log, agent.get("StandardErrorPath").getTextContent());
        Map<String, Element> vars = plistDict(agent.get("EnvironmentVariables"));
        assertTrue(vars.keySet().containsAll(Set.of("COPILOT_API_KEYS", "COPILOT_API_GITHUB_TOKEN", "HTTPS_PROXY", "SSL_CERT_FILE", "COPILOT_API_HOME")),
            vars.keySet().toString());
        assertFalse(vars.containsKey("UNRELATED_SECRET"), "only the allow-listed variables");
        assertEquals("***", vars.get("COPILOT_API_KEYS").getTextContent());
        assertEquals("http://proxy.example:3128", vars.get("HTTPS_PROXY").getTextContent(), "the proxy's password is not shown");
        assertEquals(data, vars.get("COPILOT_API_HOME").getTextContent(), "the service finds the login where install found it");
    }

    @Test
    void aWindowsTaskStartsAtLogonRestartsOnFailureAndRunsAScriptOnlyTheUserReads() throws Exception {
        Map<String, String> env = shell(Map.of("HOME", WIN_HOME, "USERNAME", "a.user", "USERDOMAIN", "PC", "SystemRoot", "C:\\Windows"));
        CopilotApiTests.CliTests.Run r = service(env, "install", "--dry-run", "--os", "windows", "--java", WIN_JAVA,
            "--port", "4242", "--api-key", "k-win", "--host", "127.0.0.1");
        assertEquals(0, r.exit(), r.err());
        assertFalse(r.out().contains("k-win") || r.out().contains("pa%40ss") || r.out().contains("UNRELATED_SECRET"), r.out());
        String data = WIN_HOME + "\\.local\\share\\copilot-api";
        String script = data + "\\service.cmd";
        assertTrue(r.out().contains("# " + script + " (readable by you only)\n"), r.out());
        assertTrue(r.out().contains("schtasks /Create /TN copilot-api /XML "), "says how the task is registered: " + r.out());

        String cmd = between(r.out().replace("\r\n", "\n"), "@echo off", "2>&1");
        assertTrue(cmd.contains("\nset \"COPILOT_API_KEYS=***\"\n") && cmd.contains("\nset \"HTTPS_PROXY=http://proxy.example:3128\"\n")
            && cmd.contains("\nset \"COPILOT_API_HOME=" + data + "\"\n"), cmd);
        assertTrue(cmd.endsWith("\n\"" + WIN_JAVA + "\" -XX:+UseSerialGC -Xms32m -Xmx512m -jar \"" + data + "\\copilot-api.jar\" start --port 4242"
            + " --host 127.0.0.1 >> \"" + data + "\\service.log\" 2>&1"), "paths with spaces quoted: " + cmd);

        Document doc = parse(between(r.out(), "<?xml", "</Task>"), true);
        Element task = doc.getDocumentElement();
        assertEquals(TASK_NAMESPACE, task.getNamespaceURI());
        assertEquals("Task", task.getLocalName());
        assertTrue(Set.of("1.2", "1.3", "1.4").contains(task.getAttribute("version")), "Task Scheduler 1.2 or newer: " + task.getAttribute("version"));
        Element logon = only(only(task, "Triggers"), "LogonTrigger");
        assertEquals("true", only(logon, "Enabled").getTextContent());
        assertEquals("PC\\a.user", only(logon, "UserId").getTextContent(), "at this user's logon, not anyone's");
        Element principal = only(only(task, "Principals"), "Principal");
        assertEquals("InteractiveToken", only(principal, "LogonType").getTextContent());
        assertEquals("LeastPrivilege", only(principal, "RunLevel").getTextContent());
        Element settings = only(task, "Settings");
        assertEquals("PT0S", only(settings, "ExecutionTimeLimit").getTextContent(), "a server has no time limit (the default stops it after 72 hours)");
        assertEquals("false", only(settings, "DisallowStartIfOnBatteries").getTextContent());
        assertEquals("false", only(settings, "StopIfGoingOnBatteries").getTextContent());
        Element restart = only(settings, "RestartOnFailure");
        assertTrue(Duration.parse(only(restart, "Interval").getTextContent()).compareTo(Duration.ofMinutes(1)) >= 0, "the schema's minimum is PT1M");
        int count = Integer.parseInt(only(restart, "Count").getTextContent());
        assertTrue(count >= 1 && count <= 999, "the schema allows 1 to 999: " + count);
        Element exec = only(only(task, "Actions"), "Exec");
        assertEquals("C:\\Windows\\System32\\cmd.exe", only(exec, "Command").getTextContent());
        assertEquals("/d /c \"\"" + script + "\"\"", only(exec, "Arguments").getTextContent(), "cmd keeps the inner quotes around a path with spaces");
        assertEquals(data, only(exec, "WorkingDirectory").getTextContent());
    }

    /** The one child element of that name, in the Task Scheduler namespace. */
    static Element only(Element parent, String name) {
        List<Element> found = new ArrayList<>();
        for (Element c : children(parent)) if (name.equals(c.getLocalName()) && TASK_NAMESPACE.equals(c.getNamespaceURI())) found.add(c);
        assertEquals(1, found.size(), "one <" + name + "> in <" + parent.getLocalName() + ">");
        return found.get(0);
    }

    @Test
    void anotherSystemsFilesOnlyWithDryRunAndABatchFileCannotCarryAQuote() throws Exception {
        Path home = Files.createTempDirectory("service-home");
        Map<String, String> env = Map.of("HOME", home.toString());
        CopilotApiTests.CliTests.Run written = service(env, "install", "--os", "windows", "--java", WIN_JAVA);
        assertEquals(2, written.exit(), written.out());
        assertTrue(written.err().contains("--os windows goes with --dry-run"), written.err());
        try (var files = Files.list(home)) {
            assertEquals(List.of(), files.toList(), "nothing written");
        }
        CopilotApiTests.CliTests.Run relative = service(env, "install", "--dry-run", "--os", "macos", "--java", "java");
        assertEquals(2, relative.exit(), relative.out());
        assertTrue(relative.err().contains("--java takes an absolute path"), relative.err());
        assertEquals(2, service(env, "install", "--dry-run", "--os", "windows", "--java", "/usr/bin/java").exit(), "not a Windows path");
        CopilotApiTests.CliTests.Run quoted = service(env, "install", "--dry-run", "--os", "windows", "--java", WIN_JAVA, "--api-key", "a\"b");
        assertEquals(1, quoted.exit(), quoted.out());
        assertTrue(quoted.err().contains("double quote"), quoted.err());
        assertFalse(quoted.err().contains("a\"b"), "the key is not shown: " + quoted.err());
    }

    static boolean userManagerRuns() throws Exception {
        return CopilotApiTests.SdkRunner.run(Path.of("/"), Map.of(), Duration.ofSeconds(30), "sh", "-c", "systemctl --user show-environment").exit() == 0;
    }

    /** Where no systemd user manager runs (this sandbox, a container, WSL without systemd), status and logs say so in one line and fail. */
    @Test
    void withoutAUserManagerStatusAndLogsSaySoInOneLineAndFail() throws Exception {
        Assumptions.assumeFalse(userManagerRuns(), "a systemd user manager runs here");
        Path home = Files.createTempDirectory("service-home");
        Map<String, String> env = Map.of("HOME", home.toString(), "XDG_CONFIG_HOME", home.resolve(".config").toString(),
            "COPILOT_API_HOME", home.resolve("data").toString());
        Path jar = Files.writeString(home.resolve("copilot-api.jar"), "not run here");
        assertEquals(0, service(env, "install", "--no-start", "--jar", jar.toString(), "--port", "4343").exit());
        CopilotApiTests.CliTests.Run status = service(env, "status");
        assertEquals(1, status.exit(), status.out());
        String said = (status.out() + status.err()).strip();
        assertEquals(1, said.lines().count(), said);
        assertTrue(said.contains("no systemd user manager") && said.contains("port 4343") && said.contains(home.resolve(".config/systemd/user/copilot-api.service").toString()), said);
        CopilotApiTests.CliTests.Run logs = service(env, "logs");
        assertEquals(1, logs.exit(), logs.out());
        String told = (logs.out() + logs.err()).strip();
        assertEquals(1, told.lines().count(), told);
        assertTrue(told.contains("no systemd user manager"), told);
        assertEquals(0, service(env, "uninstall", "--no-start").exit());
        assertEquals(3, service(env, "status").exit(), "not installed");
    }
}
