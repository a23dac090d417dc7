r"""An SBML model as a symbolic ODE: states, inputs, right-hand side, initial values.

python-libsbml reads the model (function definitions are expanded by libsbml's own
converter); each math element is written as an SBML Level 3 formula by libsbml and parsed
into sympy by PEtab's math parser (``petab.v1.math.sympify_petab``, whose grammar is that
of SBML L3 formulas for the constructs supported here).

The states are the species that reactions or rate rules change (and parameters with rate
rules). A species whose ``hasOnlySubstanceUnits`` is false is a concentration c in a
compartment of constant size V, and reactions with rates vᵣ (amount per time, the kinetic
laws) change it as

    dc/dt = Σᵣ Nᵣ vᵣ / V,

with Nᵣ its net stoichiometry in reaction r; an amount species has dn/dt = Σᵣ Nᵣ vᵣ. The
model's inputs are its constant parameters and compartment sizes (what PEtab's parameter
and condition tables may set). Assignment rules and initial assignments are substituted
symbolically, so the right-hand side and the initial state are expressions in the states,
the inputs and ``time`` only.

Constructs outside this (events, algebraic rules, delays, compartments of varying size,
non-constant stoichiometry, fast reactions, conversion factors) are refused with one line
naming the construct and the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import libsbml
import sympy as sp

from .errors import PEtabError, UnsupportedModelError

__all__ = ["SbmlOde", "ode_from_sbml", "TIME", "sympify_formula"]

TIME = sp.Symbol("time")
_AVOGADRO = 6.02214076e23


@dataclasses.dataclass(frozen=True)
class SbmlOde:
    """The symbolic ODE of an SBML model.

    - ``states``: ids of the state variables, in the order of the state vector.
    - ``inputs``: ids of the model's constant inputs (parameters, compartment sizes), the
      order of the input vector p; ``input_values`` their values in the SBML file.
    - ``rhs``: dx/dt per state, in the symbols of states, inputs and ``time``.
    - ``initial``: x(0) per state, in the symbols of inputs (and ``time`` = 0).
    - ``expressions``: assignment-rule targets (and parameters defined by an initial
      assignment) as expressions in states, inputs and ``time``; observable formulas may
      use them.
    - ``compartment_of``: for each state that is a concentration, its compartment id.
    """

    file: str
    states: tuple[str, ...]
    inputs: tuple[str, ...]
    input_values: tuple[float, ...]
    rhs: tuple[sp.Expr, ...]
    initial: tuple[sp.Expr, ...]
    expressions: dict
    species: frozenset

    def symbols(self, names):
        return [sp.Symbol(n) for n in names]


def _refuse(file, what):
    raise UnsupportedModelError(
        f"{file}: the model has {what}, which the PEtab import does not handle."
    )


def _parser_settings(model):
    # As PEtab's own SBML reader (petab.v1.models.sbml_model.sympify_sbml) writes formulas.
    return libsbml.L3ParserSettings(
        model,
        libsbml.L3P_PARSE_LOG_AS_LOG10,
        libsbml.L3P_EXPAND_UNARY_MINUS,
        libsbml.L3P_NO_UNITS,
        libsbml.L3P_AVOGADRO_IS_CSYMBOL,
        libsbml.L3P_COMPARE_BUILTINS_CASE_INSENSITIVE,
        None,
        libsbml.L3P_MODULO_IS_PIECEWISE,
    )


def _canonical(expr):
    """``expr`` with plain symbols (PEtab's parser adds assumptions) so that names match."""
    return expr.xreplace({s: sp.Symbol(s.name) for s in expr.free_symbols})


def sympify_formula(text: str, where: str) -> sp.Expr:
    """A PEtab math formula (observable, noise, SBML L3 formula) as a sympy expression;
    raises PEtabError naming ``where`` if it does not parse."""
    from petab.v1.math import sympify_petab

    try:
        expr = sympify_petab(text)
    except Exception as e:  # the parser raises several types; one message for all
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PEtabError(f"{where}: the formula {text!r} does not parse ({msg}).") from None
    if isinstance(expr, (bool, sp.logic.boolalg.BooleanAtom)):
        expr = sp.Float(1.0 if bool(expr) else 0.0)
    return _canonical(sp.sympify(expr))


def _check_ast(node, file, where):
    """Refuse delays and rateOf; name the time csymbol ``time`` (PEtab's name for it)."""
    t = node.getType()
    if t == libsbml.AST_FUNCTION_DELAY:
        _refuse(file, f"a delay (in {where})")
    if t == getattr(libsbml, "AST_FUNCTION_RATE_OF", -1):
        _refuse(file, f"rateOf (in {where})")
    if t == libsbml.AST_NAME_TIME:
        node.setName("time")
    if t == libsbml.AST_FUNCTION_LOG and node.getNumChildren() == 2:
        base = node.getChild(0)
        if not (base.isNumber() and base.getValue() == 10):
            _refuse(file, f"a logarithm with a base other than 10 (in {where})")
    if t == libsbml.AST_FUNCTION_ROOT and node.getNumChildren() == 2:
        _refuse(file, f"root(n, x) (in {where})")
    for i in range(node.getNumChildren()):
        _check_ast(node.getChild(i), file, where)


def _math(sbase, model, file, where):
    ast = sbase.getMath() if not isinstance(sbase, libsbml.ASTNode) else sbase
    if ast is None:
        raise PEtabError(f"{file}: {where} has no math.")
    ast = ast.deepCopy()
    _check_ast(ast, file, where)
    text = libsbml.formulaToL3StringWithSettings(ast, _parser_settings(model))
    try:
        expr = sympify_formula(text, f"{file}: {where}")
    except PEtabError as e:
        # A function PEtab's grammar lacks (ceil, factorial, xor, rem, ...): unsupported.
        _refuse(
            file, f"math the import cannot read in {where}: {text!r} ({e.args[0].split('(')[-1]}"
        )
    undefined = sorted(
        {
            type(f).__name__
            for f in expr.atoms(sp.Function)
            if isinstance(f, sp.core.function.AppliedUndef)
        }
    )
    if undefined:
        _refuse(file, f"the function(s) {undefined} in {where}")
    if sp.Symbol("avogadro") in expr.free_symbols:
        expr = expr.xreplace({sp.Symbol("avogadro"): sp.Float(_AVOGADRO)})
    return expr


def _resolve(exprs: dict, file: str, what: str) -> dict:
    """Substitute the definitions in ``exprs`` into each other until none refers to
    another (assignment rules may chain); a cycle is refused."""
    names = {sp.Symbol(k): k for k in exprs}
    out = dict(exprs)
    for _ in range(len(out) + 1):
        changed = False
        subs = {sp.Symbol(k): v for k, v in out.items()}
        for k, v in out.items():
            if v.free_symbols & subs.keys():
                out[k] = v.xreplace(subs)
                changed = True
        if not changed:
            return out
    cyc = sorted(k for k, v in out.items() if any(s in names for s in v.free_symbols))
    _refuse(file, f"cyclic {what} ({cyc})")


def read_sbml_document(path) -> libsbml.SBMLDocument:
    """Read an SBML file with libsbml, raising PEtabError on read errors."""
    path = str(path)
    if not Path(path).is_file():
        raise PEtabError(f"{path}: the SBML file does not exist.")
    doc = libsbml.readSBMLFromFile(path)
    return check_document(doc, path)


def check_document(doc, file):
    errors = [
        doc.getError(i)
        for i in range(doc.getNumErrors())
        if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR
    ]
    if errors or doc.getModel() is None:
        msg = errors[0].getMessage().strip().splitlines()[0] if errors else "no model element"
        line = f" line {errors[0].getLine()}" if errors else ""
        raise PEtabError(f"{file}{line}: the SBML file does not read: {msg}")
    return doc


def ode_from_sbml(doc: libsbml.SBMLDocument, file: str) -> SbmlOde:
    """The symbolic ODE of the model in ``doc`` (read from ``file``, named in errors).

    ``doc`` is changed in place: its function definitions are expanded."""
    model = doc.getModel()
    if model.getNumFunctionDefinitions():
        props = libsbml.ConversionProperties()
        props.addOption("expandFunctionDefinitions", True)
        if doc.convert(props) != libsbml.LIBSBML_OPERATION_SUCCESS:
            _refuse(file, "function definitions libsbml could not expand")
        model = doc.getModel()

    if model.getNumEvents():
        _refuse(file, f"events ({model.getNumEvents()}, e.g. {model.getEvent(0).getId()!r})")
    if model.isSetConversionFactor() if hasattr(model, "isSetConversionFactor") else False:
        _refuse(file, "a model conversion factor")

    species = {s.getId(): s for s in model.getListOfSpecies()}
    compartments = {c.getId(): c for c in model.getListOfCompartments()}
    parameters = {p.getId(): p for p in model.getListOfParameters()}
    for name in ("time", "avogadro"):
        if name in species or name in compartments or name in parameters:
            _refuse(file, f"an entity with the reserved id {name!r}")

    assignment, rate = {}, {}
    for rule in model.getListOfRules():
        if rule.isAlgebraic():
            _refuse(file, "an algebraic rule")
        var = rule.getVariable()
        kind = "rate" if rule.isRate() else "assignment"
        if var in compartments:
            _refuse(file, f"a {kind} rule on compartment {var!r} (a compartment of varying size)")
        if var not in species and var not in parameters:
            _refuse(file, f"a rule on {var!r}, which is not a species or a parameter")
        target = rate if rule.isRate() else assignment
        target[var] = _math(
            rule, model, file, f"the {'rate' if rule.isRate() else 'assignment'} rule for {var!r}"
        )

    for s in species.values():
        if s.isSetConversionFactor():
            _refuse(file, f"a conversion factor on species {s.getId()!r}")
        if s.getCompartment() not in compartments:
            raise PEtabError(
                f"{file}: species {s.getId()!r} names an unknown compartment "
                f"{s.getCompartment()!r}."
            )

    initial_assignment = {
        ia.getSymbol(): _math(ia, model, file, f"the initial assignment of {ia.getSymbol()!r}")
        for ia in model.getListOfInitialAssignments()
    }
    for sym in initial_assignment:
        if sym not in species and sym not in parameters and sym not in compartments:
            _refuse(
                file,
                f"an initial assignment to {sym!r}, which is not a species, parameter or "
                "compartment",
            )

    # Net stoichiometry and rates of the reactions.
    flux = {s: sp.Integer(0) for s in species}
    for r in model.getListOfReactions():
        rid = r.getId()
        if r.isSetFast() and r.getFast():
            _refuse(file, f"a fast reaction ({rid!r})")
        law = r.getKineticLaw()
        if law is None or law.getMath() is None:
            raise PEtabError(f"{file}: reaction {rid!r} has no kinetic law.")
        rate_expr = _math(law, model, file, f"the kinetic law of reaction {rid!r}")
        local = {sp.Symbol(p.getId()): sp.Float(p.getValue()) for p in law.getListOfParameters()}
        if hasattr(law, "getListOfLocalParameters"):
            local.update(
                {
                    sp.Symbol(p.getId()): sp.Float(p.getValue())
                    for p in law.getListOfLocalParameters()
                }
            )
        rate_expr = rate_expr.xreplace(local)
        for refs, sign in ((r.getListOfReactants(), -1), (r.getListOfProducts(), 1)):
            for ref in refs:
                if (hasattr(ref, "isSetStoichiometryMath") and ref.isSetStoichiometryMath()) or (
                    doc.getLevel() >= 3 and ref.isSetId() and not ref.getConstant()
                ):
                    _refuse(file, f"non-constant stoichiometry in reaction {rid!r}")
                sid = ref.getSpecies()
                if sid not in species:
                    raise PEtabError(f"{file}: reaction {rid!r} names an unknown species {sid!r}.")
                n = ref.getStoichiometry() if ref.isSetStoichiometry() else 1.0
                if n != n:  # L3 leaves it undefined when absent
                    n = 1.0
                flux[sid] = flux[sid] + sign * sp.Float(n) * rate_expr

    # The states: species not fixed (boundary, constant or defined by an assignment rule),
    # and parameters with rate rules.
    states, rhs = [], []
    for sid, s in species.items():
        if sid in assignment:
            continue
        fixed = s.getBoundaryCondition() or s.getConstant()
        if sid in rate:
            if s.getConstant():
                _refuse(file, f"a rate rule on constant species {sid!r}")
            derivative = rate[sid]
        elif fixed:
            derivative = sp.Integer(0)
        else:
            derivative = flux[sid]
            if not s.getHasOnlySubstanceUnits():
                derivative = derivative / sp.Symbol(s.getCompartment())
        states.append(sid)
        rhs.append(derivative)
    for pid in parameters:
        if pid in rate:
            states.append(pid)
            rhs.append(rate[pid])

    # The inputs: constant parameters (not rule targets or defined by an initial
    # assignment) and compartment sizes.
    inputs, input_values = [], []
    for pid, p in parameters.items():
        if pid in assignment or pid in rate or pid in initial_assignment:
            continue
        inputs.append(pid)
        input_values.append(float(p.getValue()) if p.isSetValue() else float("nan"))
    for cid, c in compartments.items():
        if cid in initial_assignment:
            _refuse(file, f"an initial assignment to compartment {cid!r}")
        inputs.append(cid)
        input_values.append(float(c.getSize()) if c.isSetSize() else 1.0)

    # Assignment-rule targets and parameters set by initial assignments, as expressions.
    expressions = dict(assignment)
    for pid in parameters:
        if pid in initial_assignment and pid not in assignment and pid not in rate:
            if not parameters[pid].getConstant():
                _refuse(
                    file, f"an initial assignment to non-constant parameter {pid!r} without a rule"
                )
            expressions[pid] = initial_assignment[pid]
    expressions = _resolve(expressions, file, "assignment rules")
    subs = {sp.Symbol(k): v for k, v in expressions.items()}
    rhs = [sp.sympify(e).xreplace(subs) for e in rhs]

    # Initial values: initial assignments, else the SBML attributes (species in their
    # units: concentration or amount).
    init = {}
    for sid, s in species.items():
        if sid in assignment:
            continue
        if sid in initial_assignment:
            init[sid] = initial_assignment[sid]
            continue
        size = sp.Symbol(s.getCompartment())
        if s.isSetInitialConcentration():
            c = sp.Float(s.getInitialConcentration())
            init[sid] = c * size if s.getHasOnlySubstanceUnits() else c
        elif s.isSetInitialAmount():
            n = sp.Float(s.getInitialAmount())
            init[sid] = n if s.getHasOnlySubstanceUnits() else n / size
        else:
            raise PEtabError(f"{file}: species {sid!r} has no initial value.")
    for pid in parameters:
        if pid in rate:
            init[pid] = initial_assignment.get(pid, sp.Float(parameters[pid].getValue()))
    # Initial assignments may refer to other states' initial values and to expressions.
    at0 = {sp.Symbol(k): v for k, v in expressions.items()}
    init = _resolve({k: v.xreplace(at0) for k, v in init.items()}, file, "initial assignments")
    initial = [init[s].xreplace(at0).xreplace({TIME: sp.Float(0.0)}) for s in states]

    known = set(states) | set(inputs) | {"time"}
    for what, exprs in (("the right-hand side", rhs), ("the initial values", initial)):
        for e in exprs:
            unknown = sorted(s.name for s in e.free_symbols if s.name not in known)
            if unknown:
                raise PEtabError(f"{file}: {what} refers to undefined ids {unknown}.")
    return SbmlOde(
        file=file,
        states=tuple(states),
        inputs=tuple(inputs),
        input_values=tuple(input_values),
        rhs=tuple(rhs),
        initial=tuple(initial),
        expressions=expressions,
        species=frozenset(species),
    )
