"""The parts that customers' questions are composed from, per question type and language (data only;
`wordings` composes them and draws the held-out set).

A wording = wrapper(core + closer) + ending, where the core is one way of asking (`{noun}`, `{kw}`
slots filled from the type's nouns and keyword synonyms; `{cat}`, `{c}`, `{verb}` filled per
sample as in `questions`). A core has a form, which decides the wrappers, closers and endings that
fit it: "wh" (a question word), "yn" (a yes/no question), "imp" (an imperative), "frag" (a short
fragment such as "Colour?" or "颜色？"). Parts listed under `held_out_*` occur only in the
`paraphrase` split (held-out words): never in training, nor in the tokenizer's corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORMS = ("wh", "yn", "imp", "frag")


@dataclass(frozen=True)
class TypeParts:
    """One question type in one language: its cores by form, and what fills `{noun}` and `{kw}`."""

    cores: dict[str, tuple[str, ...]]
    nouns: tuple[str, ...] = ("",)
    keywords: tuple[str, ...] = ("",)
    held_out_nouns: tuple[str, ...] = ()


@dataclass(frozen=True)
class LangParts:
    """What every type in a language shares: wrappers ("{}" is the core), closers and endings by form."""

    wrappers: dict[str, tuple[str, ...]]
    closers: dict[str, tuple[str, ...]]
    endings: dict[str, tuple[str, ...]]
    held_out_wrappers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    held_out_closers: dict[str, tuple[str, ...]] = field(default_factory=dict)


_EN_GREETINGS = ("{}", "Hi, {}", "Hello, {}", "Hey, {}", "Excuse me, {}", "Quick question: {}", "Sorry, {}")
_ZH_GREETINGS = ("{}", "你好，{}", "您好，{}", "亲，{}", "老板，{}")

LANG_PARTS: dict[str, LangParts] = {
    "en": LangParts(
        wrappers={"wh": _EN_GREETINGS, "yn": _EN_GREETINGS, "frag": ("{}", "Hi, {}", "Hey, {}"),
                  "imp": (*_EN_GREETINGS, "Please {}", "Could you {}?", "Can you {}?", "Can you please {}?",
                          "Hi, please {}", "Hello, could you {}?")},
        closers={"wh": ("", ", please", " please"), "yn": ("", ", please"), "imp": ("", ", please", " for me"),
                 "frag": ("", " please")},
        endings={"wh": ("?", "", "??"), "yn": ("?", ""), "imp": (".", "", "!"), "frag": ("?", "")},
        held_out_wrappers={"wh": ("Howdy, {}",), "yn": ("Howdy, {}",), "imp": ("Howdy, {}", "Would you kindly {}?"),
                           "frag": ("Howdy, {}",)},
        held_out_closers={"wh": (" pls",), "yn": (" pls",), "imp": (" pls",), "frag": (" pls",)},
    ),
    "zh": LangParts(
        wrappers={"wh": (*_ZH_GREETINGS, "请问{}", "请问一下，{}", "麻烦问下，{}"),
                  "yn": (*_ZH_GREETINGS, "请问{}", "麻烦问下，{}"),
                  "frag": ("{}", "亲，{}", "请问{}"),
                  "imp": (*_ZH_GREETINGS, "请{}", "麻烦{}", "帮我{}", "能不能帮我{}？", "能帮我{}吗？")},
        closers={"wh": ("", "呢", "呀", "啊"), "yn": ("",), "imp": ("", "吧"), "frag": ("", "呢")},
        endings={"wh": ("？", "?", ""), "yn": ("？", "?", ""), "imp": ("。", "", "！"), "frag": ("？", "?", "")},
        held_out_wrappers={"wh": ("哈喽，{}", "嗨，{}"), "yn": ("哈喽，{}",), "imp": ("哈喽，{}",),
                           "frag": ("嗨，{}",)},
        held_out_closers={"wh": ("哈",), "frag": ("哈",)},
    ),
}

_EN_THIS = ("it", "this", "this item", "this product", "the item", "this thing")
_EN_THIS_CAT = (*_EN_THIS, "this {cat}", "the {cat}")
_ZH_THIS = ("这个", "这件", "这件商品", "它", "这款")
_ZH_THIS_CAT = (*_ZH_THIS, "这件{cat}", "这款{cat}")

# Question types (questions.QUESTION_TYPES, then the two tasks) -> language -> parts.
TYPE_PARTS: dict[str, dict[str, TypeParts]] = {
    "category": {
        # No {cat} noun here: naming the category would give the answer away.
        "en": TypeParts(cores={
            "wh": ("What is {noun}?", "What's {noun}?", "What kind of product is {noun}?",
                   "What type of item is {noun}?", "Which category is {noun} in?", "What's in the picture?",
                   "What is shown in the photo?", "Can you tell what {noun} is?", "What product is {noun}?"),
            "imp": ("Tell me what {noun} is.", "Name {noun}.", "Identify {noun}.", "Say what {noun} is."),
            "frag": ("Category?", "Which product?", "What item?", "Product type?")},
            nouns=_EN_THIS, held_out_nouns=("this piece",)),
        "zh": TypeParts(cores={
            "wh": ("{noun}是什么？", "这是什么{kw}？", "这是啥？", "这是个啥？", "这是哪类商品？",
                   "这是什么类型的商品？", "图中是什么？", "照片里是什么东西？", "{noun}是什么商品？"),
            "imp": ("告诉我这是什么。", "说一下这是什么商品。", "识别一下{noun}。", "看看这是什么。"),
            "frag": ("什么商品？", "啥东西？", "品类？", "是什么？")},
            nouns=_ZH_THIS, keywords=("商品", "东西", ""), held_out_nouns=("这个宝贝",)),
    },
    "color": {
        "en": TypeParts(cores={
            "wh": ("What {kw} is {noun}?", "Which {kw} is {noun}?", "What's the {kw} of {noun}?",
                   "What is the main {kw} of {noun}?", "What {kw} would you call {noun}?"),
            "imp": ("Tell me the {kw} of {noun}.", "Name the {kw} of {noun}.", "Say what {kw} {noun} is."),
            "frag": ("{kw}?", "What {kw}?", "Which {kw}?", "The {kw}?")},
            nouns=_EN_THIS_CAT, keywords=("color", "colour"), held_out_nouns=("this piece",)),
        "zh": TypeParts(cores={
            "wh": ("{noun}是什么{kw}的？", "{noun}是什么{kw}？", "这是什么{kw}？", "{kw}是啥？", "啥{kw}？",
                   "是什么{kw}的？", "{noun}的{kw}是什么？", "{noun}是啥色的？", "{noun}是什么色的？"),
            "imp": ("告诉我{noun}的{kw}。", "说一下{noun}是什么{kw}。", "看看是什么{kw}。"),
            "frag": ("{kw}？", "什么{kw}？", "啥色？")},
            nouns=_ZH_THIS_CAT, keywords=("颜色",), held_out_nouns=("这个宝贝",)),
    },
    "pattern": {
        "en": TypeParts(cores={
            "wh": ("What {kw} does {noun} have?", "What's the {kw} on {noun}?", "What {kw} is on {noun}?",
                   "What is the {kw} of {noun}?", "What does the {kw} on {noun} look like?"),
            "yn": ("Is {noun} plain, striped, dotted or checked?",),
            "imp": ("Tell me the {kw} of {noun}.", "Describe the {kw} of {noun}.", "Name the {kw} on {noun}."),
            "frag": ("{kw}?", "What {kw}?", "Which {kw}?", "Plain or patterned?")},
            nouns=_EN_THIS_CAT, keywords=("pattern", "print", "design"), held_out_nouns=("this piece",)),
        "zh": TypeParts(cores={
            "wh": ("{noun}是什么{kw}？", "{noun}是什么{kw}的？", "是什么{kw}的？", "上面是什么{kw}？",
                   "{kw}是什么？", "{kw}是啥？", "啥{kw}？", "{noun}上面有什么{kw}？", "{noun}的{kw}是什么？"),
            "yn": ("{noun}是纯色、条纹、波点还是格子？",),
            "imp": ("说一下{noun}的{kw}。", "告诉我是什么{kw}。", "描述一下{noun}的{kw}。"),
            "frag": ("{kw}？", "什么{kw}？")},
            nouns=_ZH_THIS_CAT, keywords=("图案", "花纹", "花色"), held_out_nouns=("这个宝贝",)),
    },
    "yesno": {
        "en": TypeParts(cores={
            "yn": ("Is {noun} {c}?", "Is {noun} a {c} one?", "Is {noun} {c} or not?", "Is the {kw} of {noun} {c}?",
                   "Would you say {noun} is {c}?", "Does {noun} look {c}?", "Is the {kw} {c}?"),
            "imp": ("Tell me if {noun} is {c}.", "Check whether {noun} is {c}."),
            "frag": ("{c}?", "{c}, right?", "Is it {c} or what?")},
            nouns=_EN_THIS_CAT, keywords=("color", "colour"), held_out_nouns=("this piece",)),
        "zh": TypeParts(cores={
            "yn": ("{noun}是{c}的吗？", "{noun}是不是{c}的？", "是不是{c}？", "{c}的吗？", "{kw}是{c}吗？",
                   "这是{c}吗？", "{noun}是{c}吗？", "{noun}的{kw}是不是{c}？"),
            "imp": ("看看{noun}是不是{c}的。", "告诉我{noun}是不是{c}。"),
            "frag": ("{c}的？", "是{c}？")},
            nouns=_ZH_THIS_CAT, keywords=("颜色",), held_out_nouns=("这个宝贝",)),
    },
    "occasion": {
        # Keyword-free cores ("What is it good for?") teach the question, not the word "occasion".
        "en": TypeParts(cores={
            "wh": ("What {kw} is {noun} suitable for?", "What {kw} does {noun} suit?", "Which {kw} is {noun} for?",
                   "What {kw} is {noun} good for?", "What is {noun} good for?", "When would I use {noun}?",
                   "What would I use {noun} for?", "Where does {noun} fit best?", "What {kw} is {noun} best for?"),
            "imp": ("Tell me the {kw} for {noun}.", "Suggest an occasion for {noun}.", "Say when to use {noun}."),
            "frag": ("{kw}?", "Good for what?", "Best {kw}?", "Which {kw}?")},
            nouns=_EN_THIS_CAT, keywords=("occasion", "setting"), held_out_nouns=("this piece",)),
        "zh": TypeParts(cores={
            "wh": ("适合什么{kw}？", "{noun}适合什么{kw}{verb}？", "适合在什么{kw}{verb}？", "什么{kw}{verb}？",
                   "{noun}适合什么时候{verb}？", "{noun}适合去哪儿{verb}？", "{noun}适合干嘛用？",
                   "{noun}是什么{kw}{verb}的？", "适合啥{kw}？", "{noun}在什么{kw}{verb}比较好？"),
            "imp": ("说说{noun}适合什么{kw}。", "推荐一下{noun}适合的{kw}。", "告诉我{noun}什么时候{verb}。"),
            "frag": ("{kw}？", "什么{kw}？", "适合啥？")},
            nouns=_ZH_THIS_CAT, keywords=("场合",), held_out_nouns=("这个宝贝",)),
    },
    "count": {
        "en": TypeParts(cores={
            "wh": ("How many {noun} are there?", "How many {noun} are in the picture?", "How many {noun} can you see?",
                   "How many {noun} are shown?", "How many are there?", "What's the number of {noun}?",
                   "How many {noun} are in the photo?"),
            "imp": ("Count the {noun}.", "Count them.", "Tell me how many {noun} there are.", "Give me the count."),
            "frag": ("How many?", "How many {noun}?", "Number of {noun}?")},
            nouns=("items", "products", "things", "objects")),
        "zh": TypeParts(cores={
            "wh": ("{kw}有几件{noun}？", "有多少件{noun}？", "一共有几件？", "一共几件？", "有几个？", "{kw}有几个？",
                   "总共有多少件？", "{kw}一共有几件{noun}？"),
            "imp": ("数一下有几件。", "数数有多少件。", "数一数{kw}有几件{noun}。", "告诉我有几件。",
                    "数一下{kw}有多少件{noun}。"),
            "frag": ("几件？", "数量？", "多少件？")},
            nouns=("商品", "东西", ""), keywords=("图中", "图里", "照片里", "")),
    },
    "describe": {
        "en": TypeParts(cores={
            "wh": ("What does {noun} look like?", "Can you describe {noun}?"),
            "imp": ("Describe {noun}.", "Give a short description of {noun}.", "Briefly describe {noun}.",
                    "Tell me about {noun}.", "Write a short description of {noun}.", "Describe {noun} in a few words."),
            "frag": ("Description?", "Short description?")},
            nouns=_EN_THIS, held_out_nouns=("this piece",)),
        "zh": TypeParts(cores={
            "wh": ("{noun}长什么样？", "{noun}是什么样的？"),
            "imp": ("描述一下{noun}。", "描述一下。", "简单描述{noun}。", "简单描述一下。", "介绍一下{noun}。",
                    "介绍一下。", "说说{noun}。", "描述{noun}。", "形容一下{noun}。", "给{noun}写个简短描述。"),
            "frag": ("描述？", "简单描述一下？")},
            nouns=_ZH_THIS, held_out_nouns=("这个宝贝",)),
    },
    # The attributes as JSON (the answer is the catalogue's attribute object, questions.json_answer).
    "json": {
        "en": TypeParts(cores={
            "wh": ("What are the attributes of {noun} as JSON?", "Can you give the attributes of {noun} in JSON?",
                   "Answer in JSON: what is {noun}?"),
            "imp": ("Describe {noun} as JSON.", "Give the attributes of {noun} as JSON.",
                    "List the attributes of {noun} in JSON.", "Return a JSON object describing {noun}.",
                    "Output the category, color, pattern and occasions of {noun} as JSON.",
                    "Fill in the product attributes as JSON."),
            "frag": ("JSON?", "Attributes as JSON?", "This product as JSON?")},
            nouns=_EN_THIS, held_out_nouns=("this piece",)),
        "zh": TypeParts(cores={
            "wh": ("{noun}的属性用JSON怎么写？",),
            "imp": ("用JSON描述{noun}。", "以JSON格式给出{noun}的属性。", "输出{noun}的属性（JSON）。",
                    "把{noun}的品类、颜色、图案和场合写成JSON。", "返回{noun}的JSON。", "用JSON格式回答{noun}是什么。"),
            "frag": ("JSON？", "属性JSON？", "{noun}的JSON？")},
            nouns=("这件商品", "它", "这个", "这件"), held_out_nouns=("这个宝贝",)),
    },
    # What a photo cannot show (price, stock, sizes, material, delivery, returns): one fixed answer.
    "unanswerable": {
        "en": TypeParts(cores={
            "wh": ("How much is {noun}?", "What's the price of {noun}?", "How much does {noun} cost?",
                   "Is {noun} on sale?", "Is {noun} in stock?", "Is {noun} still available?", "How many are left?",
                   "When will {noun} be back in stock?", "Do you have {noun} in other colors?",
                   "What sizes does {noun} come in?", "Do you have {noun} in size M?", "What size is {noun}?",
                   "Is {noun} true to size?", "How big is {noun}?", "What is {noun} made of?",
                   "What material is {noun}?", "Is {noun} cotton?", "Is {noun} real leather?", "What brand is {noun}?",
                   "Is {noun} machine washable?", "How long does delivery take?", "When will {noun} arrive?",
                   "Do you ship abroad?", "How much is shipping?", "Is delivery free?", "Can I return {noun}?",
                   "What is your return policy?", "Can I exchange {noun} for another size?", "Is there a warranty?"),
            "imp": ("Tell me the price of {noun}.", "Check if {noun} is in stock.", "Tell me what {noun} is made of.",
                    "Tell me how long shipping takes."),
            "frag": ("Price?", "In stock?", "Sizes?", "Material?", "Shipping?", "Returns?", "Discount?")},
            nouns=_EN_THIS_CAT, held_out_nouns=("this piece",)),
        "zh": TypeParts(cores={
            "wh": ("{noun}多少钱？", "价格是多少？", "{noun}怎么卖？", "有优惠吗？", "能便宜点吗？", "{noun}打折吗？",
                   "{noun}有货吗？", "还有库存吗？", "还剩几件？", "什么时候补货？", "{noun}有其他颜色吗？",
                   "{noun}有什么尺码？", "{noun}有M码吗？", "{noun}多大？", "尺码偏大还是偏小？",
                   "{noun}是什么材质的？", "{noun}是纯棉的吗？", "{noun}是什么面料？", "是真皮的吗？",
                   "{noun}能机洗吗？", "{noun}是什么牌子的？",
                   "多久发货？", "几天能到？", "包邮吗？", "发什么快递？", "能寄到国外吗？", "运费多少？",
                   "{noun}可以退货吗？", "支持七天无理由退换吗？", "怎么退换？", "能换尺码吗？", "有保修吗？"),
            "imp": ("告诉我{noun}的价格。", "查一下{noun}有没有货。", "说一下{noun}是什么材质。", "告诉我几天能到。"),
            "frag": ("价格？", "有货？", "尺码？", "材质？", "运费？", "退货？", "多少钱？")},
            nouns=_ZH_THIS_CAT, held_out_nouns=("这个宝贝",)),
    },
}
