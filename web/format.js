// Formatting helpers for the dashboard.  Pure functions, no DOM: the tests
// import this module in the browser and check it against Python's integers.

export const WEI_PER_ETH = 10n ** 18n;
const DECIMALS = 18;

/** "1234567" -> "1,234,567" (a string of decimal digits, any length). */
export function groupDigits(digits) {
  let out = "";
  for (let i = digits.length; i > 0; i -= 3) {
    out = digits.slice(Math.max(0, i - 3), i) + (out ? "," + out : "");
  }
  return out;
}

/**
 * Split a wei amount (a decimal string, as on the wire: it can exceed 2^53)
 * into the integer part of ETH, grouped by thousands, and the fraction with
 * its trailing zeros trimmed.  Exact: BigInt arithmetic, never a float.
 * Returns null for anything that is not a non-negative decimal integer.
 */
export function splitEther(wei) {
  if (typeof wei !== "string" || !/^[0-9]+$/.test(wei)) return null;
  const value = BigInt(wei);
  const whole = value / WEI_PER_ETH;
  const fraction = (value % WEI_PER_ETH).toString().padStart(DECIMALS, "0").replace(/0+$/, "");
  return { whole: groupDigits(whole.toString()), fraction };
}

/** "1234567890123456789012" (wei) -> "1,234.567890123456789012"; null if not a wei string. */
export function formatEther(wei) {
  const parts = splitEther(wei);
  if (parts === null) return null;
  return parts.fraction ? `${parts.whole}.${parts.fraction}` : parts.whole;
}

/**
 * A wei amount in a larger unit (18 decimals: ETH, 9: gwei), rounded half up
 * to `places` decimals, trailing zeros trimmed: "2146789000000000", 18, 6 ->
 * "0.002147".  A non-zero amount that rounds to nothing is "<0.000001", never
 * "0" (a fee of 0 and a fee too small to show are not the same).  Exact
 * (BigInt); null for anything that is not a non-negative decimal integer.
 */
export function formatUnits(wei, decimals, places) {
  if (typeof wei !== "string" || !/^[0-9]+$/.test(wei)) return null;
  const value = BigInt(wei);
  const step = 10n ** BigInt(decimals - places);
  const rounded = (value + step / 2n) / step; // in units of 10^-places
  if (rounded === 0n && value > 0n) return `<0.${"0".repeat(places - 1)}1`;
  const scale = 10n ** BigInt(places);
  const whole = groupDigits((rounded / scale).toString());
  const fraction = (rounded % scale).toString().padStart(places, "0").replace(/0+$/, "");
  return fraction ? `${whole}.${fraction}` : whole;
}

/** "0x6f01a5163724…" -> "0x6f01…7c4d" (full value belongs in a title or the details). */
export function shortHex(hex, head = 4, tail = 4) {
  if (typeof hex !== "string") return "";
  if (hex.length <= 2 + head + tail + 1) return hex;
  return `${hex.slice(0, 2 + head)}…${hex.slice(-tail)}`;
}

/** 12508184 -> "12,508,184". */
export function formatInt(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  return (n < 0 ? "-" : "") + groupDigits(String(Math.round(Math.abs(n))));
}

/** A compact count: 950 -> "950", 12345 -> "12.3k", 2500000 -> "2.5M". */
export function formatCompact(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  const abs = Math.abs(n);
  if (abs < 1000) return abs < 10 && n % 1 ? n.toFixed(1) : String(Math.round(n));
  if (abs < 1e6) return `${trim1(n / 1e3)}k`;
  if (abs < 1e9) return `${trim1(n / 1e6)}M`;
  return `${trim1(n / 1e9)}G`;
}

function trim1(x) {
  return (Math.abs(x) < 100 ? x.toFixed(1) : x.toFixed(0)).replace(/\.0$/, "");
}

/** Seconds since something -> "now", "42 s", "3 min", "2 h 5 min", "3 d". */
export function formatAge(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 1) return "now";
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) {
    const m = Math.floor((s % 3600) / 60);
    return `${Math.floor(s / 3600)} h${m ? ` ${m} min` : ""}`;
  }
  return `${Math.floor(s / 86400)} d`;
}

/** A lag or duration in seconds -> "0.4 s", "12 s", "3 min". */
export function formatSeconds(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
  if (Math.abs(seconds) < 10) return `${seconds.toFixed(1)} s`;
  if (Math.abs(seconds) < 120) return `${Math.round(seconds)} s`;
  return formatAge(seconds);
}

/** A unix timestamp (seconds) -> "2021-02-17 13:53:32 UTC". */
export function formatTimestamp(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return "–";
  const d = new Date(ts * 1000);
  if (Number.isNaN(d.getTime())) return String(ts);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}
