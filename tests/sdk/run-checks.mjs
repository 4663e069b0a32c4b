// The runner the SDK check scripts share: each check in order, one line each, a closing
// "<suite>: N passed, N failed" line, and exit code 1 when any check failed.
export async function runChecks(suite, label, checks) {
  let passed = 0, failed = 0;
  for (const [name, check] of Object.entries(checks)) {
    try {
      await check();
      passed++;
      console.log(`ok   ${label}${name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${label}${name}: ${e && e.stack ? e.stack : e}`);
    }
  }
  console.log(`${suite}: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}
