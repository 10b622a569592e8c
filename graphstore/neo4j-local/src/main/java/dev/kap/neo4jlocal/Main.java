/*
 * neo4j-local: the project's local Neo4j (DESIGN.md §3).
 *
 * Starts Neo4j Community 5.26 LTS embedded (org.neo4j:neo4j) with the Bolt connector
 * (org.neo4j:neo4j-bolt) on a loopback address, authentication on, no usage reporting,
 * no HTTP and no routing connector. On every start it sets the password of user `neo4j`
 * from a file (CHANGE NOT REQUIRED), prints one line `READY bolt://ADDRESS:PORT` on stdout
 * for the supervisor, and runs until SIGTERM/SIGINT, when it shuts the DBMS down cleanly.
 *
 * Exit codes: 0 clean stop, 1 startup failure, 2 bad arguments / password file,
 * 3 Bolt port already in use.
 */
package dev.kap.neo4jlocal;

import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.io.ByteUnit;
import org.neo4j.logging.log4j.Log4jLogProvider;

public final class Main {
    static final int EXIT_FAILURE = 1;
    static final int EXIT_USAGE = 2;
    static final int EXIT_PORT_IN_USE = 3;

    /** Neo4j's default for dbms.security.auth_minimum_password_length, which we leave as is. */
    static final int MIN_PASSWORD_LENGTH = 8;

    private static final String USAGE =
            "usage: java -jar neo4j-local.jar --home DIR --bolt-port PORT --password-file FILE"
                    + " [--bolt-address 127.0.0.1] [--pagecache 512m]";

    private static final Object LOCK = new Object();
    private static DatabaseManagementService service;
    private static Log4jLogProvider userLog;
    private static OutputStream userLogStream;
    private static boolean stopped;

    /** A startup problem with the exit code that goes with it. */
    static final class Fail extends Exception {
        final int code;

        Fail(int code, String message) {
            super(message);
            this.code = code;
        }
    }

    public static void main(String[] args) {
        // Same JVM properties Neo4j's own launcher sets; must be in place before Netty/NIO load.
        System.setProperty("io.netty.tryReflectionSetAccessible",
                System.getProperty("io.netty.tryReflectionSetAccessible", "true"));
        System.setProperty("jdk.nio.maxCachedBufferSize",
                System.getProperty("jdk.nio.maxCachedBufferSize", "1024"));
        System.setProperty("log4j2.disable.jmx", System.getProperty("log4j2.disable.jmx", "true"));
        try {
            run(args);
        } catch (Fail f) {
            System.err.println("neo4j-local: " + f.getMessage());
            stop();
            System.exit(f.code);
        } catch (Throwable t) {
            System.err.println("neo4j-local: startup failed: " + t);
            Throwable cause = t.getCause();
            while (cause != null) {
                System.err.println("  caused by: " + cause);
                cause = cause.getCause();
            }
            stop();
            System.exit(EXIT_FAILURE);
        }
    }

    private static void run(String[] args) throws Exception {
        Map<String, String> opts = parseArgs(args);
        String homeArg = require(opts, "--home");
        String portArg = require(opts, "--bolt-port");
        String pwFileArg = require(opts, "--password-file");
        String address = opts.getOrDefault("--bolt-address", "127.0.0.1");
        String pagecacheArg = opts.getOrDefault("--pagecache", "512m");

        int port;
        try {
            port = Integer.parseInt(portArg);
        } catch (NumberFormatException e) {
            throw new Fail(EXIT_USAGE, "--bolt-port must be a number, got '" + portArg + "'");
        }
        if (port < 1 || port > 65535) {
            throw new Fail(EXIT_USAGE, "--bolt-port out of range: " + port);
        }
        long pagecache;
        try {
            pagecache = ByteUnit.parse(pagecacheArg);
        } catch (RuntimeException e) {
            throw new Fail(EXIT_USAGE, "--pagecache: cannot parse '" + pagecacheArg + "' (e.g. 512m, 2g)");
        }
        InetAddress bindAddress;
        try {
            bindAddress = InetAddress.getByName(address);
        } catch (IOException e) {
            throw new Fail(EXIT_USAGE, "--bolt-address: not an address: " + address);
        }
        if (!bindAddress.isLoopbackAddress()) {
            System.err.println("neo4j-local: warning: --bolt-address " + address + " is not a loopback address");
        }

        String password = readPassword(Path.of(pwFileArg));

        checkPortFree(bindAddress, address, port);

        Path home = Path.of(homeArg).toAbsolutePath().normalize();
        Path logs = home.resolve("logs");
        try {
            Files.createDirectories(logs);
        } catch (IOException e) {
            throw new Fail(EXIT_FAILURE, "cannot create home directory " + home + ": " + e);
        }

        userLogStream = new FileOutputStream(logs.resolve("neo4j.log").toFile(), true);
        userLog = new Log4jLogProvider(userLogStream);

        SocketAddress bolt = new SocketAddress(address, port);
        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home)
                .setUserLogProvider(userLog)
                .setConfig(GraphDatabaseSettings.auth_enabled, true)
                .setConfig(GraphDatabaseSettings.logs_directory, logs)
                .setConfig(GraphDatabaseSettings.pagecache_memory, pagecache)
                // Anything that would listen uses this address unless told otherwise.
                .setConfig(GraphDatabaseSettings.default_listen_address, new SocketAddress(address))
                .setConfig(GraphDatabaseSettings.default_advertised_address, new SocketAddress(address))
                // Server-side routing opens its own connector (port 7688): off.
                .setConfig(GraphDatabaseSettings.routing_enabled, false)
                // No network beyond loopback: no usage data reporting.
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                .setConfig(GraphDatabaseInternalSettings.udc_network_enabled, false)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, bolt)
                .setConfig(BoltConnector.advertised_address, bolt)
                .setConfig(BoltConnector.server_bolt_telemetry_enabled, false)
                // Embedded has no web server; keep the HTTP(S) connectors off regardless.
                .setConfig(HttpConnector.enabled, false)
                .setConfig(HttpsConnector.enabled, false)
                // Bolt's Netty loops stop after the databases; its default 5 s quiet period
                // (twice) made every stop take ~10 s longer for nothing.
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0);

        DatabaseManagementService dbms = builder.build();
        synchronized (LOCK) {
            service = dbms;
        }
        Runtime.getRuntime().addShutdownHook(new Thread(Main::stop, "neo4j-local-shutdown"));

        GraphDatabaseService system = dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME);
        GraphDatabaseService neo4j = dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
        if (!system.isAvailable(Duration.ofMinutes(2).toMillis())
                || !neo4j.isAvailable(Duration.ofMinutes(2).toMillis())) {
            throw new Fail(EXIT_FAILURE, "databases did not become available within 2 minutes");
        }

        setPassword(system, password);

        installSignalHandlers();
        System.out.println("READY bolt://" + SocketAddress.format(address, port));
        System.out.flush();

        new CountDownLatch(1).await(); // until a signal ends the JVM
    }

    /** Sets neo4j's password; idempotent, also when the password is already the same. */
    private static void setPassword(GraphDatabaseService system, String password) {
        try {
            system.executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $pw CHANGE NOT REQUIRED", Map.of("pw", password));
        } catch (RuntimeException e) {
            if (!String.valueOf(e.getMessage()).contains("Old password and new password cannot be the same")) {
                throw e;
            }
            // Already this password: only make sure no change is required.
            system.executeTransactionally("ALTER USER neo4j SET PASSWORD CHANGE NOT REQUIRED");
        }
    }

    @SuppressWarnings("restriction")
    private static void installSignalHandlers() {
        // The JVM's default exits with 128+signal; we want 0 after a clean shutdown.
        // System.exit runs the shutdown hook, which shuts the DBMS down.
        for (String name : new String[] {"TERM", "INT"}) {
            sun.misc.Signal.handle(new sun.misc.Signal(name), sig -> System.exit(0));
        }
    }

    private static void stop() {
        synchronized (LOCK) {
            if (stopped) {
                return;
            }
            stopped = true;
            try {
                if (service != null) {
                    service.shutdown();
                }
            } catch (Throwable t) {
                System.err.println("neo4j-local: error during shutdown: " + t);
            } finally {
                if (userLog != null) {
                    userLog.close();
                }
                if (userLogStream != null) {
                    try {
                        userLogStream.close();
                    } catch (IOException ignored) {
                        // nothing to do
                    }
                }
            }
        }
    }

    private static void checkPortFree(InetAddress bindAddress, String address, int port) throws Fail {
        try (ServerSocket probe = new ServerSocket()) {
            probe.setReuseAddress(true);
            probe.bind(new InetSocketAddress(bindAddress, port));
        } catch (IOException e) {
            throw new Fail(EXIT_PORT_IN_USE, "port " + port + " on " + address + " is already in use");
        }
    }

    private static String readPassword(Path file) throws Fail {
        String pw;
        try {
            pw = Files.readString(file, StandardCharsets.UTF_8).trim();
        } catch (java.nio.file.NoSuchFileException e) {
            throw new Fail(EXIT_USAGE, "password file " + file + " does not exist");
        } catch (IOException e) {
            throw new Fail(EXIT_USAGE, "cannot read password file " + file + ": " + e);
        }
        if (pw.isEmpty()) {
            throw new Fail(EXIT_USAGE, "password file " + file + " is empty");
        }
        if (pw.length() < MIN_PASSWORD_LENGTH) {
            throw new Fail(EXIT_USAGE, "password in " + file + " is shorter than "
                    + MIN_PASSWORD_LENGTH + " characters (Neo4j's minimum)");
        }
        return pw;
    }

    private static Map<String, String> parseArgs(String[] args) throws Fail {
        java.util.HashMap<String, String> out = new java.util.HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help")) {
                System.out.println(USAGE);
                System.exit(0);
            }
            String key;
            String value;
            int eq = a.indexOf('=');
            if (a.startsWith("--") && eq > 0) {
                key = a.substring(0, eq);
                value = a.substring(eq + 1);
            } else {
                key = a;
                if (i + 1 >= args.length) {
                    throw new Fail(EXIT_USAGE, "missing value for " + a + "\n" + USAGE);
                }
                value = args[++i];
            }
            switch (key) {
                case "--home", "--bolt-port", "--password-file", "--bolt-address", "--pagecache" -> out.put(key, value);
                default -> throw new Fail(EXIT_USAGE, "unknown argument " + a + "\n" + USAGE);
            }
        }
        return out;
    }

    private static String require(Map<String, String> opts, String key) throws Fail {
        String v = opts.get(key);
        if (v == null || v.isBlank()) {
            throw new Fail(EXIT_USAGE, "missing " + key + "\n" + USAGE);
        }
        return v;
    }

    private Main() {}
}
