"""Encode once, fuse many: BridgeTower split into a text pass, an image pass and the cross-modal fusion.

The stock forward runs both towers and the cross-modal stack for every (image, text) pair. Everything the cross
stack takes from the text depends on the text alone, and likewise for the image, so each is computed once and the
fusion runs per pair over the cached states. Every step calls the stock modules in the stock order, so the numbers
are those of the stock classes (see tests/test_runtime_parity.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from ..errors import InputError
from .loading import LoadedModel


@dataclass
class TextStates:
    """What the cross-modal stack needs from one text: one [length, hidden] tensor per cross layer."""

    input_ids: torch.Tensor  # [length]
    layers: torch.Tensor  # [cross_layers, length, hidden]
    itc_embedding: torch.Tensor | None  # [contrastive] (L2-normalised), when the checkpoint has ITC heads
    truncated: bool

    @property
    def length(self) -> int:
        return self.layers.shape[1]


@dataclass
class ImageStates:
    """What the cross-modal stack needs from one image: one [tokens, hidden] tensor per cross layer."""

    layers: torch.Tensor  # [cross_layers, tokens, hidden]
    itc_embedding: torch.Tensor | None


@dataclass
class Fused:
    """The cross-modal outputs for a batch of (text, image) pairs."""

    text_features: torch.Tensor  # [pairs, max_length, hidden]
    image_features: torch.Tensor  # [pairs, tokens, hidden]
    lengths: list[int]


def pixel_values(image_processor, image: Image.Image) -> torch.Tensor:
    """One RGB image preprocessed as ``BridgeTowerProcessor`` does (normalised, centre-cropped); [3, S, S]."""
    try:
        encoding = image_processor(images=image, do_normalize=True, do_center_crop=True, return_tensors="pt")
    except ValueError as error:
        raise InputError(f"the image processor cannot handle it ({error})") from None
    return encoding["pixel_values"][0]


class Runtime:
    """The BridgeTower forward as separate text, image and fusion steps over one loaded backbone."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.network = loaded.network
        self.tower = loaded.network.bridgetower
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.device = loaded.device
        text_layers = len(self.tower.text_model.encoder.layer)
        self.split = text_layers - self.tower.config.num_hidden_layers + 1
        self.image_size = self.processor.image_processor.size["shortest_edge"]  # the resize target's short side
        self.max_length = min(
            self.tokenizer.model_max_length, self.tower.config.text_config.max_position_embeddings - 2
        )
        # No token spans more characters than its byte-level form has: a text longer than this has more tokens than
        # the limit (twice over), so cutting it here first keeps its first max_length tokens as they were, and a
        # 10-million-character text costs what a short one does.
        self.longest_token = max(map(len, self.tokenizer.get_vocab()))
        self.text_char_limit = 2 * (self.max_length + 1) * self.longest_token
        self.fast_decode = False  # JPEGs read at a reduced scale (see images.decode_image); set by its owner

    @property
    def fusion_layers(self) -> int:
        """How many cross-modal (fusion) layers the checkpoint has."""
        return len(self.tower.cross_modal_text_layers)

    @property
    def logit_scale(self) -> float:
        """The ITC logit scale (``logit_scale.exp()``)."""
        return self.network.logit_scale.exp().item()

    @property
    def default_batch_size(self) -> int:
        """Pairs per fused batch when the user names none: 8 on a CPU (batching gains little there), 16 on a GPU."""
        return 16 if self.device.type == "cuda" else 8

    # -- inputs -------------------------------------------------------------------------------------------------

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one RGB image exactly as ``BridgeTowerProcessor`` does; [3, S, S]."""
        return pixel_values(self.processor.image_processor, image)

    def prepare_image(self, data: bytes) -> tuple[Image.Image, str, torch.Tensor]:
        """Image file bytes to what the model takes: (the RGB image it sees, how it was padded: see
        ``images.fit_aspect``, its pixel values). Plain CPU work with no model call: safe in any thread."""
        from ..images import decode_image, fit_aspect

        image = decode_image(data, short_side=self.image_size if self.fast_decode else None)
        image, padded = fit_aspect(image, self.image_size)
        return image, padded, self.pixel_values(image)

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids per text (truncated to the model's limit) and whether each was truncated. Plain CPU work with
        no model call: a server runs it on the request's thread."""
        cut = [len(text) > self.text_char_limit for text in texts]
        texts = [text[: self.text_char_limit] for text in texts]
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        at_limit = [k for k, tokens in enumerate(ids) if len(tokens) == self.max_length and not cut[k]]
        truncated = list(cut)
        if at_limit:  # only a text that filled the limit can have been cut
            full = self.tokenizer([texts[k] for k in at_limit])["input_ids"]
            for k, tokens in zip(at_limit, full):
                truncated[k] = len(tokens) > self.max_length
        return ids, truncated

    def _mask(self, attention_mask: torch.Tensor, like: torch.Tensor):
        return create_bidirectional_mask(
            config=self.tower.config, inputs_embeds=like[:, 0:1, :], attention_mask=attention_mask
        )

    # -- unimodal passes ----------------------------------------------------------------------------------------

    def encode_texts(self, texts: list[str]) -> list[TextStates]:
        """The text tower once per text: cross-stack inputs and, with ITC heads, the unimodal text embedding."""
        return self.encode_tokens(*self.tokenize(texts))

    @torch.inference_mode()
    def encode_tokens(self, ids: list[list[int]], truncated: list[bool]) -> list[TextStates]:
        """``encode_texts`` of texts already tokenized (``tokenize``)."""
        tower = self.tower
        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        input_ids = padded["input_ids"].to(self.device)
        attention_mask = padded["attention_mask"].to(self.device)
        hidden = tower.text_model.embeddings(input_ids=input_ids)
        mask = self._mask(attention_mask, hidden)
        layers = tower.text_model.encoder.layer
        for layer in layers[: self.split]:
            hidden = layer(hidden, mask)
        type_embedding = tower.token_type_embeddings(torch.zeros(1, dtype=torch.long, device=self.device))
        first = tower._apply_text_transform(hidden, layer_idx=0)
        states = [tower.cross_modal_text_layernorm(first + type_embedding.expand_as(first))]
        for link, layer in enumerate(layers[self.split :], start=1):
            hidden = layer(hidden, mask)
            states.append(tower._apply_text_transform(hidden, link) + type_embedding.expand_as(first))
        stacked = torch.stack(states, dim=1)  # [batch, cross_layers, length, hidden]
        itc = self._normalize(self.network.itc_text_head(hidden[:, 0, :])) if "itc" in self.loaded.heads else None
        lengths = attention_mask.sum(dim=1).tolist()
        return [
            TextStates(input_ids[i, :n], stacked[i, :, :n], None if itc is None else itc[i], truncated[i])
            for i, n in enumerate(lengths)
        ]

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> list[ImageStates]:
        """The vision tower once per image ([batch, 3, S, S]): cross-stack inputs and the unimodal embedding."""
        stacked, itc = self.image_pass(pixel_values)
        return [ImageStates(stacked[i], None if itc is None else itc[i]) for i in range(stacked.shape[0])]

    def image_pass(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``encode_images`` as tensors (what int8 exports): [batch, cross_layers, tokens, hidden] and, with ITC
        heads, the embeddings [batch, contrastive]."""
        tower = self.tower
        visual = tower.vision_model.visual
        dtype = tower.vision_model.dtype
        hidden = visual.forward_pre(pixel_values.to(self.device).type(dtype))
        blocks = visual.transformer.resblocks
        for block in blocks[: self.split]:
            hidden = block(hidden)
        type_embedding = tower.token_type_embeddings(torch.ones(1, dtype=torch.long, device=self.device))
        first = tower._apply_image_transform(visual.forward_post(hidden.type(dtype)), layer_idx=0)
        states = [tower.cross_modal_image_layernorm(first + type_embedding.expand_as(first))]
        for link in range(1, len(tower.text_model.encoder.layer) - self.split + 1):
            hidden = blocks[self.split + link - 1](hidden).type(dtype)
            transformed = tower._apply_image_transform(visual.forward_post(hidden), link)
            states.append(transformed + type_embedding.expand_as(transformed))
        itc = None
        if "itc" in self.loaded.heads:
            itc = self._normalize(self.network.itc_image_head(states[-1][:, 0, :]))
        return torch.stack(states, dim=1), itc

    @staticmethod
    def _normalize(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1, p=2)

    # -- fusion and heads ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def fuse(self, texts: list[TextStates], images: list[ImageStates]) -> Fused:
        """The cross-modal stack over pairs (texts[k], images[k])."""
        return self.fuse_states(texts, images)

    def padded(self, texts: list[TextStates]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Texts' cross-stack inputs padded to the longest ([texts, layers, longest, hidden]), their attention mask
        ([texts, longest] of 1/0) and lengths."""
        lengths = [t.length for t in texts]
        longest = max(lengths)
        text_layers = torch.stack([nn.functional.pad(t.layers, (0, 0, 0, longest - t.length)) for t in texts])
        attention_mask = torch.zeros(len(texts), longest, dtype=torch.long, device=text_layers.device)
        for row, n in enumerate(lengths):
            attention_mask[row, :n] = 1
        return text_layers, attention_mask, lengths

    def fuse_states(self, texts: list[TextStates], images: list[ImageStates]) -> Fused:
        """``fuse`` in the caller's autograd mode (``bt explain`` differentiates it)."""
        text_layers, attention_mask, lengths = self.padded(texts)
        image_layers = torch.stack([i.layers for i in images])
        text_out, image_out = self.cross_stack(text_layers, image_layers, self._mask(attention_mask, text_layers[:, 0]))
        return Fused(text_out, image_out, lengths)

    def cross_stack(self, text_layers: torch.Tensor, image_layers: torch.Tensor, mask) -> tuple:
        """The cross-modal layers and link towers over padded text states, image states and the text mask as the
        attention takes it (what int8 exports): the text and image outputs."""
        tower = self.tower
        text_in, image_in = text_layers[:, 0], image_layers[:, 0]
        text_out = tower.cross_modal_text_layers[0](text_in, image_in, attention_mask=mask)[0]
        image_out = tower.cross_modal_image_layers[0](image_in, text_in, encoder_attention_mask=mask)[0]
        for link in range(1, text_layers.shape[1]):
            text_in = tower.cross_modal_text_link_tower[link - 1](text_layers[:, link], text_out, mask)
            image_in = tower.cross_modal_image_link_tower[link - 1](image_layers[:, link], image_out, None)
            text_out = tower.cross_modal_text_layers[link](text_in, image_in, attention_mask=mask)[0]
            image_out = tower.cross_modal_image_layers[link](image_in, text_in, encoder_attention_mask=mask)[0]
        return text_out, image_out

    @torch.inference_mode()
    def itm_logits(self, fused: Fused) -> torch.Tensor:
        """ITM logits [pairs, 2] (no-match, match)."""
        return self.itm_head(fused)

    @torch.inference_mode()
    def match_scores(self, pairs: list[tuple[TextStates, ImageStates]], batch_size: int) -> list[tuple[float, float]]:
        """ITM (match logit, match probability) per (text, image) pair, ``batch_size`` pairs per fused pass."""
        scores: list[tuple[float, float]] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            logits = self.itm_head(self.fuse([t for t, _ in chunk], [i for _, i in chunk])).float()
            scores += zip(logits[:, 1].tolist(), logits.softmax(dim=-1)[:, 1].tolist())
        return scores

    def itm_head(self, fused: Fused) -> torch.Tensor:
        """``itm_logits`` in the caller's autograd mode."""
        return self.network.itm_score(self.tower.get_cls_features(fused.text_features, fused.image_features))

    @torch.inference_mode()
    def mlm_logits(self, fused: Fused, pair: int, positions: list[int]) -> torch.Tensor:
        """MLM logits [len(positions), vocab] for one pair of the batch."""
        return self.network.mlm_score(fused.text_features[pair, positions])

    @torch.inference_mode()
    def cross_embeddings(self, fused: Fused) -> torch.Tensor:
        """The L2-normalised cross-modal ITC embedding [pairs, contrastive]."""
        pooled = self.tower.get_cls_features(fused.text_features, fused.image_features)
        return self._normalize(self.network.itc_cross_modal_head(pooled))

    def gradcam(self, text: TextStates, image: ImageStates, layer: int) -> tuple[float, torch.Tensor]:
        """The match probability of one pair and its Grad-CAM over fusion layer ``layer``, [text tokens, grid, grid]
        (CLS and SEP included): the text stream's cross-attention probabilities times their positive gradient from
        the match logit, averaged over heads. One model call: it hooks the shared module while it runs."""
        captured = {}

        def keep_attention(module, args, output):
            captured["attention"] = output[1]  # [1, heads, text tokens, 1 + patches]

        hook = self.tower.cross_modal_text_layers[layer].crossattention.register_forward_hook(keep_attention)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # Cached states are inference tensors: their clones can enter a graph. The text side requires grad
                # so that the attention probabilities do, whatever the parameters' flags.
                text_in = TextStates(text.input_ids, text.layers.clone().requires_grad_(), None, False)
                image_in = ImageStates(image.layers.clone(), None)
                logits = self.itm_head(self.fuse_states([text_in], [image_in]))
                attention = captured["attention"]
                (gradient,) = torch.autograd.grad(logits[0, 1], attention)
        finally:
            hook.remove()
        attention, gradient = attention.detach()[0].float(), gradient[0].float()
        cam = (attention[:, :, 1:] * gradient[:, :, 1:].clamp(min=0)).mean(dim=0)  # [text tokens, patches]
        side = int(round(cam.shape[-1] ** 0.5))
        probability = logits.detach().float().softmax(dim=-1)[0, 1].item()
        return probability, cam.reshape(cam.shape[0], side, side).cpu()
