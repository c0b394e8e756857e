// One voice turn on Parley's page in Firefox ESR, driven over WebDriver BiDi (puppeteer-core, no download).
// usage: node turn.mjs <server url> <question.wav> <screenshot.png>
// Prints one JSON line with what the page showed and heard.
import fs from "node:fs";
import puppeteer from "puppeteer-core";

const [url, wavPath, shot] = process.argv.slice(2);
const wav = fs.readFileSync(wavPath).toString("base64");

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
  headless: true,
  extraPrefsFirefox: {
    "media.navigator.permission.disabled": true, // no permission prompt for the microphone
    "media.peerconnection.ice.loopback": true, // Firefox leaves loopback out of ICE candidates otherwise
    "media.peerconnection.ice.obfuscate_host_addresses": false,
    "media.autoplay.default": 0,
    "media.autoplay.block-webaudio": false,
  },
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`[page] ${m.text()}`)); // lands in the test's failure output
  // Firefox's fake microphone plays a tone; feed the page's getUserMedia the question from a media element.
  // The page's own code runs unmodified: it asks for the mic with echoCancellation on and gets this stream.
  await page.evaluateOnNewDocument((b64) => {
    navigator.mediaDevices.getUserMedia = async (constraints) => {
      window.parleyMicConstraints = constraints;
      const audio = new Audio(`data:audio/wav;base64,${b64}`);
      await audio.play();
      return audio.mozCaptureStream(); // the element's output, now silent locally, becomes the "microphone"
    };
  }, wav);
  await page.goto(url);
  await page.click("#call");
  try {
    await page.waitForFunction(() => window.parley.events.some((e) => e.type === "response.done"), {
      timeout: 120000, polling: 200,
    });
  } catch (err) {
    const seen = await page.evaluate(() => ({
      state: window.parley.state, events: window.parley.events.map((e) => e.type),
      error: document.querySelector("#error").textContent,
    }));
    throw new Error(`no response.done: ${JSON.stringify(seen)}`);
  }
  await new Promise((r) => setTimeout(r, 500));
  const result = await page.evaluate(() => ({
    userAgent: navigator.userAgent,
    state: window.parley.state,
    user: [...document.querySelectorAll("#transcript li.user .text")].map((e) => e.textContent),
    assistant: [...document.querySelectorAll("#transcript li.assistant .text")].map((e) => e.textContent),
    remoteLevelMax: window.parley.remoteLevelMax,
    remoteSpeechFrames: window.parley.remoteSpeechFrames,
    latencyRows: document.querySelectorAll("#latency tr").length,
    echoCancellation: window.parleyMicConstraints?.audio?.echoCancellation,
    inboundAudioEnergy: window.parley.inboundAudioEnergy,
    inboundPackets: window.parley.inboundPackets,
  }));
  await page.screenshot({ path: shot, fullPage: true });
  await page.click("#hangup");
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
