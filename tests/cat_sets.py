"""Hand-written CaT tasks for retail and airline: valid ones and one defect per check.

Each task's ``meta.expect`` is ``"valid"`` or the rejection reason that
``sca validate`` must give. Facts come from tau2's databases: see the ids
below and what is said of them.
"""

from __future__ import annotations

import json
from pathlib import Path


def cat(id: str, env: str, expect: str, instruction: str, evaluate: str, solution: str, *failures: str) -> dict:
    return {
        "id": id, "env": env, "instruction": instruction,
        "evaluation_function": evaluate, "solution": solution,
        "failure_cases": list(failures), "meta": {"expect": expect},
    }


# -- retail ------------------------------------------------------------------------------------
ORDER = "#W2974929"  # pending, Fatima Anderson (fatima_anderson_2157), one skateboard, paid by paypal_7916550
USER = "fatima_anderson_2157"  # orders: #W2974929 pending, #W4111294 cancelled, #W4514908 pending

CANCELLED = f'''def evaluate():
    o = get_order_details(order_id="{ORDER}")
    return o["status"] == "cancelled" and o["cancel_reason"] == "no longer needed"
'''

RETAIL_TASKS = [
    # the example of CAT.md; its no-op failure case passes only if the state is reset after the solution
    cat("ret-valid-cancel", "retail", "valid",
        "You are Fatima Anderson (zip 32100). Cancel your pending skateboard order because you no longer need it.",
        CANCELLED,
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n',
        f"cancel_pending_order(order_id='{ORDER}', reason='ordered by mistake')\n",
        f"get_user_details(user_id='{USER}')\n",
        f"modify_pending_order_address(order_id='{ORDER}', address1='1 Main St', address2='', city='Austin', "
        "state='TX', country='USA', zip='73301')\n"),
    # a failure case that dies on a ToolError (invalid reason) is allowed
    cat("ret-valid-tool-error-failure", "retail", "valid",
        "You are Fatima Anderson. Cancel the skateboard order; you ordered it by mistake.",
        f'''def evaluate():
    o = get_order_details(order_id="{ORDER}")
    return o["status"] == "cancelled" and o.get("cancel_reason") == "ordered by mistake"
''',
        'uid = find_user_id_by_name_zip("Fatima", "Anderson", "32100")\n'
        'orders = get_user_details(uid)["orders"]\n'
        'for oid in orders:\n'
        '    o = get_order_details(oid)\n'
        '    if o["status"] == "pending" and any(i["name"] == "Skateboard" for i in o["items"]):\n'
        '        cancel_pending_order(oid, "ordered by mistake")\n',
        f"cancel_pending_order(order_id='{ORDER}', reason='changed my mind')\n",
        f"cancel_pending_order(order_id='{ORDER}', reason='no longer needed')\n",
        "answer = 'cancelled'\n"),
    # a question: evaluate(answer) checks the answer, which in retail is the agent's message to the user
    cat("ret-valid-answer", "retail", "valid",
        "You are Fatima Anderson (zip 32100). How many orders have you placed with us?",
        "import re\ndef evaluate(answer):\n    return re.findall(r'\\d+', str(answer)) == ['3']\n",
        f'n = len(get_user_details(user_id="{USER}")["orders"])\nanswer = f"You have placed {{n}} orders."\n',
        "answer = 'You have placed 2 orders.'\n", "answer = '3 orders, 2 of them pending'\n", "pass\n"),
    # the same question, but evaluate() wants the number 3: an agent can only say it in a message
    cat("ret-bad-answer-not-typeable", "retail", "answer_not_typeable",
        "You are Fatima Anderson (zip 32100). How many orders have you placed with us?",
        "def evaluate(answer):\n    return answer == 3\n",
        f'answer = len(get_user_details(user_id="{USER}")["orders"])\n',
        "answer = 2\n", "answer = '3 orders'\n", "pass\n"),
    # only valid if every run starts from the initial state: the solution moves Fatima to Austin;
    # failure case 0 writes the same address to the order only, which passes if the user's address
    # from the solution run were still there
    cat("ret-valid-needs-reset", "retail", "valid",
        "You are Fatima Anderson. You moved: change your default address to 1 Main St, Austin TX 73301, USA.",
        f'''def evaluate():
    a = get_user_details(user_id="{USER}")["address"]
    return a["address1"] == "1 Main St" and a["city"] == "Austin" and a["zip"] == "73301"
''',
        f'modify_user_address(user_id="{USER}", address1="1 Main St", address2="", city="Austin", state="TX", '
        'country="USA", zip="73301")\n',
        f"modify_pending_order_address(order_id='{ORDER}', address1='1 Main St', address2='', city='Austin', "
        "state='TX', country='USA', zip='73301')\n",
        f"modify_user_address(user_id='{USER}', address1='1 Main St', address2='', city='Dallas', state='TX', "
        "country='USA', zip='75201')\n",
        "pass\n"),
    # -- one defect per check --
    cat("ret-bad-syntax", "retail", "compile", "Cancel the order.", CANCELLED,
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed"\n', "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-no-evaluate", "retail", "compile", "Cancel the order.",
        "def check():\n    return True\n", "pass\n", "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-two-failures", "retail", "failure_case_count", "Cancel the order.", CANCELLED,
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n', "pass\n", "answer = 1\n"),
    cat("ret-bad-trivial", "retail", "noop_passes", "Make sure the skateboard order exists.",
        f'def evaluate():\n    return get_order_details(order_id="{ORDER}")["status"] in ("pending", "cancelled")\n',
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n', "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-solution-fails", "retail", "solution_fails", "Cancel the skateboard order.", CANCELLED,
        f'cancel_pending_order(order_id="{ORDER}", reason="ordered by mistake")\n', "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-solution-tool-error", "retail", "solution_error", "Cancel a delivered order.", CANCELLED,
        'cancel_pending_order(order_id="#W4111294", reason="no longer needed")\n'
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n',
        "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-unknown-tool", "retail", "solution_error", "Cancel the order.", CANCELLED,
        f'refund_everything(order_id="{ORDER}")\n', "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-failure-passes", "retail", "failure_case_passes", "Cancel the order.", CANCELLED,
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n',
        "pass\n", f'cancel_pending_order("{ORDER}", "no longer needed")\n', "pass\n"),
    cat("ret-bad-failure-crashes", "retail", "failure_case_error", "Cancel the order.", CANCELLED,
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n',
        "pass\n", "x = 1 / 0\n", "pass\n"),
    cat("ret-bad-evaluate-writes", "retail", "evaluate_writes", "Cancel the order.",
        f'''def evaluate():
    try:
        cancel_pending_order(order_id="{ORDER}", reason="no longer needed")
    except ToolError:
        pass
    return get_order_details(order_id="{ORDER}")["status"] == "cancelled"
''',
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n', "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-evaluate-not-bool", "retail", "evaluate_not_bool", "Cancel the order.",
        f'def evaluate():\n    return get_order_details(order_id="{ORDER}")["status"]\n',
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n', "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-evaluate-raises", "retail", "evaluate_error", "Cancel the order.",
        f'def evaluate():\n    return get_order_details(order_id="{ORDER}")["cancel_reason"].startswith("no")\n',
        f'cancel_pending_order(order_id="{ORDER}", reason="no longer needed")\n', "pass\n", "pass\n", "pass\n"),
    cat("ret-bad-infinite-loop", "retail", "timeout", "Cancel the order.", CANCELLED,
        "while True:\n    pass\n", "pass\n", "pass\n", "pass\n"),
]

# -- airline ------------------------------------------------------------------------------------
RES = "4WQ150"  # Chen Jackson (chen_jackson_3290), DFW-LAX round trip, business, 3 passengers, not cancelled
AL_USER = "chen_jackson_3290"

RES_CANCELLED = f'''def evaluate():
    r = get_reservation_details(reservation_id="{RES}")
    return r.get("status") == "cancelled"
'''

AIRLINE_TASKS = [
    cat("air-valid-cancel", "airline", "valid",
        "You are Chen Jackson (user id chen_jackson_3290). Cancel your reservation from Dallas to Los Angeles.",
        RES_CANCELLED,
        f'user = get_user_details(user_id="{AL_USER}")\n'
        'for rid in user["reservations"]:\n'
        '    r = get_reservation_details(reservation_id=rid)\n'
        '    if r["origin"] == "DFW" and r["destination"] == "LAX":\n'
        '        cancel_reservation(reservation_id=rid)\n',
        f"get_reservation_details(reservation_id='{RES}')\n",
        "cancel_reservation(reservation_id='DDHPNX')\n",
        "cancel_reservation(reservation_id='NOSUCH')\n"),
    cat("air-valid-answer", "airline", "valid",
        "You are Chen Jackson (user id chen_jackson_3290). How many passengers are on reservation 4WQ150?",
        "def evaluate(answer):\n    return answer is not None and '3' in str(answer).split()\n",
        f'n = len(get_reservation_details("{RES}")["passengers"])\nanswer = f"There are {{n}} passengers."\n',
        "answer = 'There are 2 passengers.'\n", "answer = None\n",
        f'answer = "There are " + str(get_reservation_details("{RES}")["total_baggages"]) + " bags."\n'),
    cat("air-bad-trivial", "airline", "noop_passes", "Keep the reservation.",
        f'def evaluate():\n    return get_reservation_details(reservation_id="{RES}")["cabin"] == "business"\n',
        "pass\n", "pass\n", "pass\n", "pass\n"),
    cat("air-bad-solution-fails", "airline", "solution_fails", "Cancel the reservation.", RES_CANCELLED,
        "cancel_reservation(reservation_id='DDHPNX')\n", "pass\n", "pass\n", "pass\n"),
    cat("air-bad-evaluate-writes", "airline", "evaluate_writes", "Cancel the reservation.",
        f'def evaluate():\n    cancel_reservation(reservation_id="{RES}")\n    return True\n',
        f'cancel_reservation(reservation_id="{RES}")\n', "pass\n", "pass\n", "pass\n"),
    cat("air-bad-failure-passes", "airline", "failure_case_passes", "Cancel the reservation.", RES_CANCELLED,
        f'cancel_reservation(reservation_id="{RES}")\n', "pass\n", "pass\n", f'cancel_reservation("{RES}")\n'),
]

ALL_TASKS = RETAIL_TASKS + AIRLINE_TASKS


def write_jsonl(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path
