// A feedsup consumer in Node.js (zeromq v6 + @msgpack/msgpack from npm).
//
//   node consumer.mjs PUB_ENDPOINT [--frames N] [--seconds S] [--prefix P ...]
//
// Subscribes to PUB_ENDPOINT (prefixes: --prefix, default everything), takes
// N frames or runs S seconds, whichever comes first, and checks the wire
// contract (README "Consumer wire contract", docs/schema/frame.schema.json):
// per-topic seq continuity (a hole = frames lost on the way, another epoch =
// the parent restarted) and the type of every field it knows. Prints one JSON
// line, the verdict, and exits 0 if it is "OK" (frames came, no hole, no
// type error), 1 otherwise.

import { Subscriber } from "zeromq"
import { Decoder } from "@msgpack/msgpack"

const args = process.argv.slice(2)
const endpoint = args.shift()
let maxFrames = 1000, seconds = 30
const prefixes = []
while (args.length) {
  const flag = args.shift()
  if (flag === "--frames") maxFrames = Number(args.shift())
  else if (flag === "--seconds") seconds = Number(args.shift())
  else if (flag === "--prefix") prefixes.push(args.shift())
  else { console.error(`unknown argument ${flag}`); process.exit(2) }
}
if (!endpoint) { console.error("usage: node consumer.mjs PUB_ENDPOINT [--frames N] [--seconds S] [--prefix P]"); process.exit(2) }

// recv_ns and exchange ids may pass 2^53: int64/uint64 decode as BigInt.
const decoder = new Decoder({ useBigInt64: true })

const DECIMAL = /^-?[0-9]+(\.[0-9]+)?$/
const isInt = (v) => (typeof v === "number" && Number.isInteger(v)) || typeof v === "bigint"
const T = {
  dec: (v) => typeof v === "string" && DECIMAL.test(v),
  int: isInt,
  intOrNull: (v) => v === null || isInt(v),   // backfilled frames carry no event time / trade ids
  bool: (v) => typeof v === "boolean",
  str: (v) => typeof v === "string",
  levels: (v) => Array.isArray(v) && v.every((l) => Array.isArray(l) && l.length === 2 && T.dec(l[0]) && T.dec(l[1])),
}
// channel -> field -> check; the channel is the topic's part before the symbol.
const FIELDS = {
  kline: { symbol: "str", interval: "str", open_time: "int", close_time: "int", open: "dec", high: "dec", low: "dec",
    close: "dec", volume: "dec", quote_volume: "dec", trades: "int", closed: "bool", event_time: "intOrNull",
    first_trade_id: "intOrNull", last_trade_id: "intOrNull", taker_buy_volume: "dec", taker_buy_quote_volume: "dec" },
  aggTrade: { symbol: "str", agg_id: "int", price: "dec", qty: "dec", first_trade_id: "int", last_trade_id: "int",
    time: "int", buyer_maker: "bool", event_time: "intOrNull" },
  trade: { symbol: "str", trade_id: "int", price: "dec", qty: "dec", time: "int", buyer_maker: "bool", event_time: "intOrNull" },
  bookTicker: { symbol: "str", update_id: "int", bid_price: "dec", bid_qty: "dec", ask_price: "dec", ask_qty: "dec" },
  depth: { symbol: "str", update_id: "int", event_time: "int", bids: "levels", asks: "levels" },
  miniTicker: { symbol: "str", event_time: "int", close: "dec", open: "dec", high: "dec", low: "dec", volume: "dec",
    quote_volume: "dec" },
  markPrice: { symbol: "str", event_time: "int", mark_price: "dec", index_price: "dec", funding_rate: "dec",
    next_funding_time: "int" },
}
FIELDS.ticker = { ...FIELDS.miniTicker, price_change: "dec", open_time: "int", close_time: "int", trades: "int" }

function channelOf(topic) {
  const parts = topic.split(".")
  for (const part of parts) if (part in FIELDS) return part
  return null
}

function check(frame, errors) {
  const bad = (what) => { if (errors.length < 20) errors.push(`${frame.topic ?? "?"}: ${what}`) }
  if (!T.str(frame.topic)) return bad("topic is not a string")
  if (!isInt(frame.seq) || frame.seq < 1) bad(`seq ${frame.seq}`)
  if (!isInt(frame.epoch) || frame.epoch < 1) bad(`epoch ${frame.epoch}`)
  if (!T.str(frame.stream)) bad("stream is not a string")
  if (!isInt(frame.recv_ns)) bad("recv_ns is not an integer")
  if (frame.gap !== undefined) {
    if (frame.data !== null) bad("a gap notice with data")
    if (!T.str(frame.gap.reason)) bad("gap without a reason")
    return
  }
  if (frame.data === null || typeof frame.data !== "object") return bad("data is not a map")
  const fields = FIELDS[channelOf(frame.topic)]
  if (!fields) return      // account events: their fields pass through from Binance
  for (const [name, kind] of Object.entries(fields)) {
    if (!T[kind](frame.data[name])) bad(`${name}=${JSON.stringify(frame.data[name], (_, v) => typeof v === "bigint" ? `${v}` : v)} is not ${kind}`)
  }
}

const sock = new Subscriber({ receiveHighWaterMark: 1_000_000 })
sock.connect(endpoint)
if (prefixes.length) for (const p of prefixes) sock.subscribe(p)
else sock.subscribe()

const last = new Map()                // topic -> [epoch, last seq]
let frames = 0, holes = 0, missed = 0, restarts = 0
const errors = []
const timer = setTimeout(() => sock.close(), seconds * 1000)

try {
  for await (const [topic, payload] of sock) {
    const frame = decoder.decode(payload)
    if (frame.topic !== topic.toString()) errors.push(`payload topic ${frame.topic} != ${topic}`)
    check(frame, errors)
    const seq = Number(frame.seq)
    const epoch = Number(frame.epoch)
    const prev = last.get(frame.topic)
    if (prev !== undefined && (epoch !== prev[0] || seq !== prev[1] + 1)) {
      if (epoch !== prev[0] || seq <= prev[1]) restarts++     // another parent: seq from 1 again
      else { holes++; missed += seq - prev[1] - 1 }
    }
    last.set(frame.topic, [epoch, seq])
    if (++frames >= maxFrames) break
  }
} catch (err) {
  if (!sock.closed) throw err          // closed by the timer: the time is up
}
clearTimeout(timer)
if (!sock.closed) sock.close()

const ok = frames > 0 && holes === 0 && errors.length === 0
console.log(JSON.stringify({ verdict: ok ? "OK" : "FAIL", frames, topics: last.size, holes, missed, restarts, errors }))
process.exit(ok ? 0 : 1)
