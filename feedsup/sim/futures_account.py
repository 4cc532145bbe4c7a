"""USD-M REST views of the simulated futures account: ``GET /fapi/v2/account``,
``GET /fapi/v3/account`` and ``GET /fapi/v1/openOrders`` bodies.

Pure functions of the account; shapes and field types as Binance documents
them (decimals as strings, times as integer ms, flags as booleans). What the
simulator does not model is reported as Binance reports an account with
nothing of it: margin is not modelled, so every margin figure is "0" and the
whole wallet is available; positions are marked at their entry price, so
unrealized profit is 0, as the simulator's ``ACCOUNT_UPDATE`` events say
(``"up": "0"``). Figures the events carry are rendered exactly as the events
render them (``wb``/``cw`` -> walletBalance/crossWalletBalance, ``pa`` ->
positionAmt, ``ep``/``bep`` -> entryPrice/breakEvenPrice), so a snapshot and
the events agree field for field.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .decimals import d8, plain

if TYPE_CHECKING:
    from .userdata import Account, Order

ZERO = Decimal(0)
# Single-asset mode: the account totals count the USDT asset only (Binance's note).
TOTALS_ASSET = "USDT"
LEVERAGE = "20"          # Binance's default initial leverage
MAX_NOTIONAL = "250000"  # the example bracket for the default leverage


def futures_open_order(o: "Order") -> dict[str, Any]:
    """One row of ``GET /fapi/v1/openOrders`` (no ``cumQty``: that is the order ack's)."""
    avg = (o.quote / o.filled) if o.filled else ZERO
    return {"avgPrice": d8(avg), "clientOrderId": o.client_id, "cumQuote": d8(o.quote),
            "executedQty": plain(o.filled), "orderId": o.order_id, "origQty": plain(o.qty), "origType": o.type,
            "price": plain(o.price), "reduceOnly": False, "side": o.side, "positionSide": "BOTH",
            "status": o.status, "stopPrice": "0", "closePosition": False, "symbol": o.symbol, "time": o.created,
            "timeInForce": o.tif or "GTC", "type": o.type, "updateTime": o.updated,
            "workingType": "CONTRACT_PRICE", "priceProtect": False, "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0}


def futures_account(acct: "Account", version: int) -> dict[str, Any]:
    """``GET /fapi/v2/account`` (``version=2``) or ``/fapi/v3/account`` (3)."""
    wallet = acct.balances.get(TOTALS_ASSET, [ZERO, ZERO])[0]
    body: dict[str, Any] = {}
    if version == 2:
        # updateTime here is documented as "reserved property, please ignore": 0.
        body.update({"feeTier": 0, "feeBurn": False, "canTrade": True, "canDeposit": True, "canWithdraw": True,
                     "updateTime": 0, "multiAssetsMargin": False, "tradeGroupId": -1})
    body.update({
        "totalInitialMargin": d8(ZERO), "totalMaintMargin": d8(ZERO), "totalWalletBalance": d8(wallet),
        "totalUnrealizedProfit": d8(ZERO), "totalMarginBalance": d8(wallet),
        "totalPositionInitialMargin": d8(ZERO), "totalOpenOrderInitialMargin": d8(ZERO),
        "totalCrossWalletBalance": d8(wallet), "totalCrossUnPnl": d8(ZERO), "availableBalance": d8(wallet),
        "maxWithdrawAmount": d8(wallet),
        "assets": [_asset(acct, a, v[0], version) for a, v in sorted(acct.balances.items())],
        "positions": _positions(acct, version),
    })
    return body


def _asset(acct: "Account", asset: str, wallet: Decimal, version: int) -> dict[str, Any]:
    row = {"asset": asset, "walletBalance": d8(wallet), "unrealizedProfit": d8(ZERO),
           "marginBalance": d8(wallet), "maintMargin": d8(ZERO), "initialMargin": d8(ZERO),
           "positionInitialMargin": d8(ZERO), "openOrderInitialMargin": d8(ZERO),
           "crossWalletBalance": d8(wallet), "crossUnPnl": d8(ZERO), "availableBalance": d8(wallet),
           "maxWithdrawAmount": d8(wallet)}
    if version == 2:
        row["marginAvailable"] = True
    row["updateTime"] = acct.asset_times.get(asset, 0)
    return row


def _positions(acct: "Account", version: int) -> list[dict[str, Any]]:
    """v2 lists every symbol; v3 only those with a position or open orders."""
    rows = []
    for symbol in sorted(acct.hub.markets[acct.market]):
        amount, entry = acct.positions.get(symbol, [ZERO, ZERO])
        orders = acct.open_orders(symbol)
        if version == 2:
            rows.append(_position_v2(acct, symbol, amount, entry, orders))
        elif amount != 0 or orders:
            rows.append(_position_v3(acct, symbol, amount, entry))
    return rows


def _position_v2(acct: "Account", symbol: str, amount: Decimal, entry: Decimal,
                 orders: list["Order"]) -> dict[str, Any]:
    def notional(side: str) -> Decimal:
        return sum(((o.qty - o.filled) * o.price for o in orders if o.side == side), ZERO)
    return {"symbol": symbol, "initialMargin": "0", "maintMargin": "0", "unrealizedProfit": d8(ZERO),
            "positionInitialMargin": "0", "openOrderInitialMargin": "0", "leverage": LEVERAGE, "isolated": False,
            "entryPrice": d8(entry), "breakEvenPrice": d8(entry), "maxNotional": MAX_NOTIONAL,
            "bidNotional": plain(notional("BUY")), "askNotional": plain(notional("SELL")),
            "positionSide": "BOTH", "positionAmt": plain(amount),
            "updateTime": acct.position_times.get(symbol, 0)}


def _position_v3(acct: "Account", symbol: str, amount: Decimal, entry: Decimal) -> dict[str, Any]:
    return {"symbol": symbol, "positionSide": "BOTH", "positionAmt": plain(amount),
            "unrealizedProfit": d8(ZERO), "isolatedMargin": "0", "notional": d8(amount * entry),
            "isolatedWallet": "0", "initialMargin": "0", "maintMargin": "0",
            "updateTime": acct.position_times.get(symbol, 0)}


def position_risk(acct: "Account", symbol: str | None) -> list[dict[str, Any]]:
    """``GET /fapi/v2/positionRisk``: one row per symbol (one-way mode), marked at
    the entry price as everywhere in the simulator (no unrealized profit, no liquidation)."""
    rows = []
    for sym in sorted(acct.hub.markets[acct.market]):
        if symbol and sym != symbol.upper():
            continue
        amount, entry = acct.positions.get(sym, [ZERO, ZERO])
        m = acct.hub.markets[acct.market][sym]
        mark = acct.price_of(m, m.center)
        rows.append({"entryPrice": d8(entry), "breakEvenPrice": d8(entry), "marginType": "cross",
                     "isAutoAddMargin": "false", "isolatedMargin": d8(ZERO), "leverage": LEVERAGE,
                     "liquidationPrice": "0", "markPrice": d8(mark), "maxNotionalValue": MAX_NOTIONAL,
                     "positionAmt": plain(amount), "notional": d8(amount * entry), "isolatedWallet": "0",
                     "symbol": sym, "unRealizedProfit": d8(ZERO), "positionSide": "BOTH",
                     "updateTime": acct.position_times.get(sym, 0)})
    return rows


def leverage_bracket(symbol: str) -> dict[str, Any]:
    """``GET /fapi/v1/leverageBracket``: one bracket, the default leverage's."""
    return {"symbol": symbol, "notionalCoef": 1.0, "brackets": [
        {"bracket": 1, "initialLeverage": int(LEVERAGE), "notionalCap": int(MAX_NOTIONAL), "notionalFloor": 0,
         "maintMarginRatio": 0.004, "cum": 0.0}]}


def position_risk_v3(acct: "Account", symbol: str | None) -> list[dict[str, Any]]:
    """``GET /fapi/v3/positionRisk``: only symbols with a position or open orders."""
    rows = []
    for row in position_risk(acct, symbol):
        sym = row["symbol"]
        orders = acct.open_orders(sym)
        if Decimal(row["positionAmt"]) == 0 and not orders:
            continue
        rows.append({"symbol": sym, "positionSide": "BOTH", "positionAmt": row["positionAmt"],
                     "entryPrice": row["entryPrice"], "breakEvenPrice": row["breakEvenPrice"],
                     "markPrice": row["markPrice"], "unRealizedProfit": d8(ZERO), "liquidationPrice": "0",
                     "isolatedMargin": "0", "notional": row["notional"], "marginAsset": TOTALS_ASSET,
                     "isolatedWallet": "0", "initialMargin": "0", "maintMargin": "0",
                     "positionInitialMargin": "0", "openOrderInitialMargin": "0", "adl": 0,
                     "bidNotional": "0", "askNotional": "0", "updateTime": row["updateTime"]})
    return rows
